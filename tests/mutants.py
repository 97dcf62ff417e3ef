"""The mutation check: plant each bug of a fixed list, one at a time, and require the tests named after it
to fail.

    python tests/mutants.py [--jobs N] [--only SUBSTRING] [--list]

Each bug is planted in a scratch copy of the *installed* package (Python files as installed, and for bugs
in csrc/ a scratch libled_engine built from the mutated C against the build tree's llama.h). The tests run
from the repository against that copy (it is first on sys.path, for pytest and for every `python -m
led_local.cli` a test starts). First the unmutated copy must pass every listed test; then each mutant must
make at least one of its tests fail. Exit status 0 only if every mutant was caught.

It needs a regular install (`pip install '.[test]'`, what the README and CI do): an editable install's
import hook would load the repository's files instead of the mutated copy, and the check says so.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str                 # the bug, as a reviewer would plant it
    path: str                 # led_local/... (the installed copy) or csrc/... (rebuilt into libled_engine)
    old: str                  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]    # pytest node ids (relative to the repository) that must catch it


T_LEDGEN = "tests/test_led_generation.py::"
T_STEPS = T_LEDGEN + "test_every_generated_step_is_led_step_on_its_rows"
T_SERVER_FIELDS = "tests/test_server.py::test_every_sampling_field_reaches_the_sampler"
T_UPSTREAM = "tests/test_upstream.py::test_seeded_sampling_identical_to_upstream"
T_TOOLS = "tests/test_tools.py::"
T_HOSTILE = "tests/test_hostile.py::test_a_hostile_request_gets_its_error_and_harms_no_one"

MUTANTS = [
    # --- DoLa ----------------------------------------------------------------------------------------------
    Mutant("dola: always contrasts with the first candidate layer (no Jensen-Shannon choice)", "csrc/led_core.c",
           "    if (m > 1) {\n        // Jensen-Shannon", "    if (m > 1000) {\n        // Jensen-Shannon",
           ("tests/test_dola.py::test_greedy_dola_equals_reference_decode",)),
    Mutant("dola: the chain after the contrast runs on the final logits", "csrc/dola_sampler.c",
           "led_constrained_candidates(&st->constrained, st->contrast)", "led_constrained_candidates(&st->constrained, z0)",
           ("tests/test_dola.py::test_dola_chain_runs_on_the_contrast",)),
    # --- LED's latent loop in the sampler glue ---------------------------------------------------------------
    Mutant("led: latent rows not divided by T", "csrc/led_sampler.c",
           "led_row_normalize(zj, st->n_vocab, p->temperature);", "led_row_normalize(zj, st->n_vocab, 1.0f);",
           (T_STEPS,)),
    Mutant("led: latent blocks read one lower", "csrc/led_sampler.c",
           "zl + (int64_t) st->latent_index[j - 1] * st->n_vocab",
           "zl + (int64_t) ((st->latent_index[j - 1] + 1) % (p->d - 1)) * st->n_vocab", (T_STEPS,)),
    Mutant("led: latent blocks read one higher", "led_local/engine.py",
           "return [n - 1 - j for j in range(1, d)]", "return [n - j for j in range(1, d)]", (T_STEPS,)),
    Mutant("led: one depth fewer", "csrc/led_sampler.c",
           "for (int32_t j = 1; j < p->d; j++) {", "for (int32_t j = 1; j < p->d - 1; j++) {", (T_STEPS,)),
    Mutant("led: think_only ignored (always stops exploring after </think>)", "led_local/sampling.py",
           "marker = engine.end_of_thinking_tokens() if self.config.think_only else []\n"
           "        return _native.led_sampler_new(engine, self.config.d, self.config.k, self.temperature, self.config.exploit,\n"
           "                                       self.config.think_only, marker, seed, latent_index,",
           "marker = engine.end_of_thinking_tokens()\n"
           "        return _native.led_sampler_new(engine, self.config.d, self.config.k, self.temperature, self.config.exploit,\n"
           "                                       True, marker, seed, latent_index,",
           (T_LEDGEN + "test_think_only_off_keeps_exploring_after_end_of_thinking",)),
    Mutant("led: think_only ignored (never stops exploring)", "csrc/led_sampler.c",
           "const bool allowed = !(p->think_only && st->thinking_over);", "const bool allowed = true;",
           (T_LEDGEN + "test_generation_stops_exploring_once_the_model_closes_its_thinking",)),
    Mutant("led: the coin's sides swapped", "csrc/led_sampler.c",
           "const bool explored = u_coin < 1.0f - p_exploit;", "const bool explored = u_coin < p_exploit;",
           (T_STEPS,)),
    Mutant("led: greedy (T = 0) samples instead of taking the argmax", "csrc/led_sampler.c",
           "led_draw(probs, n, u_sample, p->temperature <= 0.0f)", "led_draw(probs, n, u_sample, false)",
           (T_LEDGEN + "test_greedy_led_draws_the_argmax_of_the_branch_its_coin_took",)),
    Mutant("led: the latent head runs in the graph on every step", "led_local/sampling.py",
           "return (layers, False, self.config.latent_norm and bool(layers))",
           "return (layers, True, self.config.latent_norm and bool(layers))",
           (T_LEDGEN + "test_latent_head_runs_only_on_exploring_steps",)),
    Mutant("led: LEDConfig.layers ignored by generation", "led_local/sampling.py",
           "        if self.layers is not None:\n            bad =", "        if False:\n            bad =",
           (T_STEPS,)),
    Mutant("led: a bad LEDConfig raises TypeError where the README promises ValueError", "led_local/sampling.py",
           "                raise ValueError(str(e)) from None\n", "                raise\n",
           (T_LEDGEN + "test_invalid_led_settings",)),
    Mutant("led core: the think gate depends on the exploit switch", "csrc/led_core.c",
           "    if (!explore_allowed) {\n        return 1.0f;", "    if (!explore_allowed && exploit) {\n        return 1.0f;",
           ("tests/test_led_core.py::test_gates",)),
    # --- standard sampling ------------------------------------------------------------------------------------
    Mutant("standard: top_k ignored", "led_local/sampling.py",
           "(self.temperature, self.top_k, self.top_p,\n", "(self.temperature, 0, self.top_p,\n",
           (T_UPSTREAM,)),
    Mutant("standard: top_p ignored", "led_local/sampling.py",
           "(self.temperature, self.top_k, self.top_p,\n", "(self.temperature, self.top_k, 1.0,\n",
           (T_UPSTREAM,)),
    Mutant("standard: min_p ignored", "led_local/sampling.py",
           "self.min_p, self.typical_p)", "0.0, self.typical_p)",
           (T_UPSTREAM,)),
    Mutant("standard: repeat_penalty ignored", "led_local/sampling.py",
           "logit_bias=self.logit_bias, repeat_penalty=self.repeat_penalty,", "logit_bias=self.logit_bias, repeat_penalty=1.0,",
           (T_UPSTREAM,)),
    Mutant("standard: a default that is not llama-cpp-python's (top_k 20)", "led_local/generate.py",
           "    max_tokens: int | None = 16,\n    temperature: float = 0.8,\n    top_k: int = 40,",
           "    max_tokens: int | None = 16,\n    temperature: float = 0.8,\n    top_k: int = 20,",
           ("tests/test_upstream.py::test_defaults_are_llama_cpp_python_s",)),
    # --- generation -------------------------------------------------------------------------------------------
    Mutant("generation: one token past max_tokens", "led_local/scheduler.py",
           "len(s.tokens) >= job.max_tokens", "len(s.tokens) > job.max_tokens",
           ("tests/test_generation.py::test_max_tokens_length",)),
    Mutant("generation: each token's bytes decoded alone (split characters broken)", "led_local/textstream.py",
           "self.text += self.decoder.decode(self.token_bytes(token))",
           'self.text += self.token_bytes(token).decode("utf-8", "replace")',
           ("tests/test_generation.py::test_utf8_split_across_tokens_streams_whole_characters",
            "tests/test_textstream.py::test_a_character_split_across_tokens_streams_whole")),
    Mutant("architecture: diagnostics reach into the engine's insides", "led_local/diagnostics.py",
           "final = llama.engine.logits(row)", "final = llama.engine.logits(row) + 0 * llama.engine._probe",
           ("tests/test_architecture.py::test_no_module_reads_another_s_underscore_members",)),
    Mutant("architecture: the scheduler decodes text again", "led_local/scheduler.py",
           "if s.text is not None and s.text.feed(token):",
           "if s.text is not None and engine.token_to_bytes(token) is not None and s.text.feed(token):",
           ("tests/test_architecture.py::test_the_token_loop_holds_no_text",)),
    Mutant("text: the tail held back for a partial stop match dropped when a sample ends by length or EOG",
           "led_local/textstream.py",
           "            end = len(self.text)\n            self.closed = True",
           "            end = len(self.text) - held_back(self.text, self.stops)\n            self.closed = True",
           ("tests/test_textstream.py::test_the_held_back_tail_is_handed_out_when_the_sample_ends",)),
    Mutant("text: a stop string searched only in the newest token's text (one across tokens missed)",
           "led_local/textstream.py", "window = max(0, before - self.longest_stop + 1)", "window = before",
           ("tests/test_textstream.py::test_a_stop_string_across_tokens_cuts_the_text_before_it",
            "tests/test_generation.py::test_stop_strings")),
    Mutant("engine: a decode may ask for more outputs than n_seq_max (llama.cpp aborts)", "led_local/engine.py",
           "if wanted > most:", "if False:",
           ("tests/test_latents.py::test_latent_rows_are_bounded_by_n_seq_max",)),
    Mutant("scheduler: the cached prefixes ignored when choosing a slot", "led_local/scheduler.py",
           "return common_prefix(slot.tokens, job.prompt) if self.prefix_cache and job.reuse else 0", "return 0",
           ("tests/test_scheduler.py::test_prefix_reuse_equals_a_fresh_context",
            "tests/test_scheduler.py::test_cached_tokens_on_the_second_turn_of_a_chat")),
    Mutant("scheduler: a long prompt in one piece, freezing the others' streams", "led_local/scheduler.py",
           "budget = self.engine.n_batch - len(entries)", "budget = 10**9",
           ("tests/test_scheduler.py::test_a_long_prompt_is_chunked_between_the_others_steps",)),
    Mutant("pool: a sequence blocked at the pool's end is not packed (the decode fails)", "led_local/engine.py",
           "                self.compact()\n", "",
           ("tests/test_scheduler.py::test_a_sequence_blocked_at_the_end_of_the_pool_is_packed_and_stays_exact",)),
    Mutant("pool: no cells reserved for max_tokens (requests that cannot fit together are admitted)",
           "led_local/scheduler.py", "return min(self.capacity, len(job.prompt) + job.n * per_sample)",
           "return len(job.prompt)",
           ("tests/test_scheduler.py::test_requests_that_do_not_fit_together_wait_and_then_run_as_alone",)),
    Mutant("pool: one KV stream per slot again (n_ctx / n_seq_max cells each, no shared prompt)",
           "csrc/led_engine.c", "params.kv_unified      = true;", "params.kv_unified      = false;",
           ("tests/test_scheduler.py::test_parallel_samples_share_their_prompts_cells",
            "tests/test_scheduler.py::test_one_request_may_use_the_whole_context")),
    Mutant("eval: NaN written into summary.json (not JSON)", "led_local/eval/runner.py",
           "return data if math.isfinite(data) else None", "return data",
           ("tests/test_eval.py::test_eval_drops_ks_above_n_writes_strict_json_and_report_keeps_the_runs_ks",)),
    Mutant("eval: --report without --k forgets the run's ks", "led_local/commands/eval.py",
           "k_list or report.previous_ks(Path(report_dir))", "k_list",
           ("tests/test_eval.py::test_eval_drops_ks_above_n_writes_strict_json_and_report_keeps_the_runs_ks",)),
    Mutant("chat: /reset keeps the statistics", "led_local/commands/chat.py",
           "session.turns, session.last, session.stats = [], {}, {}", "session.turns = []",
           ("tests/test_commands.py::test_chat_reset_and_history",)),
    Mutant("generate: an answer cut by max_tokens says nothing", "led_local/commands/generate.py",
           'if finish == "length":', "if False:",
           ("tests/test_commands.py::test_generate_says_when_max_tokens_cut_the_answer",)),
    Mutant("serve: no access log line for a non-streamed request", "led_local/server.py",
           "if log is not None and not getattr(request.state, \"streaming\", False):", "if False:",
           ("tests/test_server.py::test_access_log_one_line_per_request_and_quiet",)),
    Mutant("server: chat templates behind the context's lock (the event loop waits for every step)",
           "led_local/engine.py", "        chat = self.chat\n        if chat is None:",
           "        with self.lock:\n            chat = self.chat\n        if chat is None:",
           ("tests/test_server.py::test_rendering_and_parsing_chats_never_wait_for_the_steps",)),
    Mutant("server: a client that hangs up does not cancel its job", "led_local/server.py",
           "        if not job.finished:\n            self.scheduler.cancel(job)", "        pass",
           ("tests/test_server.py::test_disconnect_mid_stream_frees_the_slot",)),
    Mutant("server: never answers 503 when the queue is full", "led_local/server.py",
           "if driver.scheduler.queued >= limits.max_queue:", "if False:",
           ("tests/test_server.py::test_full_queue_gets_503_and_sigterm_ends_streams_cleanly",)),
    Mutant("chat: non-text content parts silently dropped", "led_local/chat.py",
           "    if isinstance(content, list):\n        for j, part in enumerate(content):",
           "    if isinstance(content, list):\n        content = [p for p in content if isinstance(p, dict) and p.get('type') == 'text']\n        for j, part in enumerate(content):",
           ("tests/test_server.py::test_content_parts",)),
    Mutant("chat: drops a turn on every turn once the window is full", "led_local/commands/chat.py",
           "prompt_len() > (room // 2 if dropped else room)", "prompt_len() > room",
           ("tests/test_commands.py::test_chat_drops_old_turns_once_then_keeps_its_cache",)),
    Mutant("chat: the reservoir notice on every switch to LED", "led_local/commands/chat.py",
           "        self.noticed = True\n", "        self.noticed = False\n",
           ("tests/test_commands.py::test_chat_says_once_when_led_will_rarely_explore",)),
    Mutant("led core: greedy token_probs report the T > 0 mixture", "csrc/led_core.c",
           "        const float r = greedy ? (float) (c == top_exploit) : out->exploit_probs[c];\n"
           "        const float e = greedy ? (float) (c == top_explore) : out->explore_probs[c];",
           "        const float r = out->exploit_probs[c];\n        const float e = out->explore_probs[c];",
           ("tests/test_led_core.py::test_greedy_token_probs_are_what_greedy_emits",)),
    # --- constraints: logit bias, penalties, grammar -----------------------------------------------------------
    Mutant("led: candidates picked from the unconstrained final logits", "csrc/led_sampler.c",
           "    z0 = led_constrained_apply(", "    (void) led_constrained_apply(",
           ("tests/test_constraints.py::test_led_constraints_act_on_the_final_layer_before_the_candidates",)),
    Mutant("dola: the contrast made from the unconstrained final logits", "csrc/dola_sampler.c",
           "    z0 = led_constrained_apply(", "    (void) led_constrained_apply(",
           ("tests/test_constraints.py::test_grammar_output_matches_the_grammar[dola]",)),
    Mutant("standard: the chain draws from the unconstrained logits", "csrc/chain_sampler.c",
           "    z0 = led_constrained_apply(", "    (void) led_constrained_apply(",
           ("tests/test_constraints.py::test_grammar_output_matches_the_grammar[standard]",)),
    Mutant("constraints: their changes to the logits ignored (one helper for LED, DoLa and standard)",
           "csrc/led_constrained.c", "        c->z[cur.data[i].id] = cur.data[i].logit;",
           "        c->z[cur.data[i].id] = z0[cur.data[i].id];",
           ("tests/test_constraints.py::test_grammar_output_matches_the_grammar",)),
    Mutant("constraints: presence penalty passed as the frequency penalty", "led_local/sampling.py",
           "p.repeat_penalty, p.frequency_penalty, p.presence_penalty = (self.repeat_penalty, self.frequency_penalty,\n"
           "                                                                     self.presence_penalty)",
           "p.repeat_penalty, p.frequency_penalty, p.presence_penalty = (self.repeat_penalty, self.frequency_penalty,\n"
           "                                                                     self.frequency_penalty)",
           ("tests/test_upstream.py::test_seeded_sampling_identical_to_upstream[presence_penalty]",
            "tests/test_constraints.py::test_led_constraints_act_on_the_final_layer_before_the_candidates")),
    Mutant("json mode: response_format's grammar dropped", "led_local/generate.py",
           "return grammar if from_format is None else from_format", "return grammar",
           ("tests/test_constraints.py::test_json_schema_answers_validate",)),
    Mutant("server: response_format dropped", "led_local/server.py",
           "chat_constraints(rendered, body.grammar, body.response_format, body.stop)",
           "chat_constraints(rendered, body.grammar, None, body.stop)",
           ("tests/test_server.py::test_json_schema_response_format_through_the_official_client",)),
    # --- logprobs ------------------------------------------------------------------------------------------------
    Mutant("logprobs: not normalized (raw logits minus their max)", "led_local/sampling.py",
           "logp = z - (m + np.log(np.exp(z - m).sum()))", "logp = z - m",
           ("tests/test_generation.py::test_logprobs_are_the_log_softmax_of_the_final_logits",)),
    Mutant("led logprobs: the final layer's instead of the distribution drawn from", "led_local/sampling.py",
           "        step = _native.led_sampler_last(handle)\n",
           "        return final_logprobs(engine, row, token, top)\n        step = _native.led_sampler_last(handle)\n",
           ("tests/test_generation.py::test_led_logprobs_are_those_of_the_distribution_drawn_from",)),
    # --- llama-cpp-python's keywords ---------------------------------------------------------------------------
    Mutant("echo: the prompt not put before the text", "led_local/generate.py",
           "echo=echo_text(llama, prompt, tokens) if echo else \"\",", "echo=\"\",",
           ("tests/test_generation.py::test_llama_cpp_python_accessors_and_from_pretrained",)),
    Mutant("flash_attn: the keyword never reaches the context", "led_local/engine.py",
           "batch_invariant, {None: -1, False: 0, True: 1}[flash_attn],", "batch_invariant, -1,",
           ("tests/test_generation.py::test_flash_attn_switch_reaches_the_context",)),
    # --- embeddings -------------------------------------------------------------------------------------------
    Mutant("embeddings: a generative model pooled by its last token, not the mean", "led_local/engine.py",
           'return kind if kind in (1, 2, 3, 4) else POOLING["mean"]', 'return kind if kind in (1, 2, 3, 4) else POOLING["last"]',
           ("tests/test_embeddings.py::test_mean_pooled_embeddings_equal_llama_cpp_python_s",)),
    Mutant("server: embeddings not normalized", "led_local/server.py",
           "llama.create_embedding(body.input, model_id, normalize=True)",
           "llama.create_embedding(body.input, model_id, normalize=False)",
           ("tests/test_server.py::test_embeddings_endpoint",)),
    Mutant("load_state: the KV restored but not the slots' cached tokens", "led_local/scheduler.py",
           "            slot.tokens = list(tokens)\n", "            pass\n",
           ("tests/test_scheduler.py::test_save_and_load_state_continue_identically",)),
    Mutant("suffix: the middle token left out of the FIM prompt", "led_local/generate.py",
           "llama.tokenize(suffix, add_bos=False) + [mid]", "llama.tokenize(suffix, add_bos=False)",
           ("tests/test_generation.py::test_suffix_fills_in_the_middle",)),
    # --- batch-invariant kernels ---------------------------------------------------------------------------------
    Mutant("batch-invariant: the context keeps llama.cpp's default CPU kernels", "csrc/led_engine.c",
           "if (ctx != NULL && batch_invariant && ", "if (ctx != NULL && false && ",
           ("tests/test_scheduler.py::test_batch_invariant_logits_do_not_depend_on_how_a_prompt_is_batched",)),
    Mutant("batch-invariant: the weights are still repacked", "led_local/engine.py",
           "n_gpu_layers, not batch_invariant,", "n_gpu_layers, True,",
           ("tests/test_scheduler.py::test_batch_invariant_logits_do_not_depend_on_how_a_prompt_is_batched",)),
    # --- server -----------------------------------------------------------------------------------------------
    Mutant("server: frequency_penalty dropped", "led_local/server.py", "**{p.name: getattr(self, p.field) for p in params.PARAMS}",
           "**{p.name: (getattr(self, p.field) if p.name != 'frequency_penalty' else p.request_default) for p in params.PARAMS}",
           (T_SERVER_FIELDS,)),
    Mutant("server: logit_bias dropped", "led_local/server.py", "logit_bias=self.logit_bias,", "logit_bias=None,",
           (T_SERVER_FIELDS,)),
    Mutant("server: unknown fields silently ignored", "led_local/server.py",
           "            raise ApiError(f\"unknown field '{name}'", "            continue\n            raise ApiError(f\"unknown field '{name}'",
           ("tests/test_server.py::test_fields_that_cannot_be_honoured_get_400",)),
    Mutant("server: top_p dropped", "led_local/server.py", "**{p.name: getattr(self, p.field) for p in params.PARAMS}",
           "**{p.name: (getattr(self, p.field) if p.name != 'top_p' else p.request_default) for p in params.PARAMS}",
           (T_SERVER_FIELDS,)),
    Mutant("server: top_k dropped", "led_local/server.py", "**{p.name: getattr(self, p.field) for p in params.PARAMS}",
           "**{p.name: (getattr(self, p.field) if p.name != 'top_k' else p.request_default) for p in params.PARAMS}",
           (T_SERVER_FIELDS,)),
    Mutant("server: min_p dropped", "led_local/server.py", "**{p.name: getattr(self, p.field) for p in params.PARAMS}",
           "**{p.name: (getattr(self, p.field) if p.name != 'min_p' else p.request_default) for p in params.PARAMS}",
           (T_SERVER_FIELDS,)),
    Mutant("server: repeat_penalty dropped", "led_local/server.py", "**{p.name: getattr(self, p.field) for p in params.PARAMS}",
           "**{p.name: (getattr(self, p.field) if p.name != 'repeat_penalty' else p.request_default) for p in params.PARAMS}",
           (T_SERVER_FIELDS,)),
    Mutant("server: dola_layers dropped", "led_local/server.py",
           'kwargs["dola_layers"] = self.dola_layers', 'kwargs["dola_layers"] = "high"', (T_SERVER_FIELDS,)),
    Mutant("server: every LED field but d dropped", "led_local/server.py",
           'kwargs["led"] = self.led.model_dump()', 'kwargs["led"] = {"d": self.led.d}', (T_SERVER_FIELDS,)),
    Mutant("server: stop dropped", "led_local/server.py", "stop=self.stop,", "stop=None,",
           ("tests/test_server.py::test_stop_and_max_completion_tokens_pass_through",)),
    Mutant("server: max_completion_tokens ignored", "led_local/server.py",
           "max_tokens = self.max_completion_tokens or self.max_tokens or", "max_tokens = self.max_tokens or",
           ("tests/test_server.py::test_stop_and_max_completion_tokens_pass_through",)),
    Mutant("serve: binds every interface by default", "led_local/commands/serve.py",
           '"--host", default="127.0.0.1"', '"--host", default="0.0.0.0"',
           ("tests/test_server.py::test_binds_loopback_by_default_and_takes_the_key_from_the_environment",)),
    Mutant("serve: LED_LOCAL_API_KEY ignored", "led_local/commands/serve.py",
           'envvar="LED_LOCAL_API_KEY"', "envvar=None",
           ("tests/test_server.py::test_binds_loopback_by_default_and_takes_the_key_from_the_environment",)),
    # --- a server that no request can take down (tests/test_hostile.py) ------------------------------------------
    Mutant("bounds: a grammar's nesting depth unchecked", "led_local/grammar_bounds.py",
           "    if depth > MAX_DEPTH:", "    if False:", (T_HOSTILE + "[grammar nested 65 deep]",)),
    Mutant("bounds: runs of may-be-empty grammar items unchecked", "led_local/grammar_bounds.py",
           "    if m.longest_run > MAX_NULLABLE_RUN:", "    if False:",
           (T_HOSTILE + "[grammar nested nullable repetitions]",)),
    Mutant("bounds: a JSON schema's property count unchecked", "led_local/grammar_bounds.py",
           "if isinstance(props, dict) and len(props) > MAX_PROPERTIES:", "if False:",
           (T_HOSTILE + "[json_object schema with 2,000 properties]",)),
    Mutant("bounds: LED's k not checked against the vocabulary", "led_local/sampling.py",
           "        if self.k > engine.n_vocab():", "        if False:",
           (T_HOSTILE + "[led.k beyond the vocabulary]",)),
    Mutant("server: stop strings unbounded", "led_local/server.py",
           "        if len(stops) > limits.max_stops:", "        if False:",
           (T_HOSTILE + "[2,000 stop strings of 400 characters]",)),
    Mutant("server: no body limit", "led_local/server.py",
           "        self.app, self.limit = app, limit", "        self.app, self.limit = app, 1 << 40",
           (T_HOSTILE + "[a 9 MB body declared by Content-Length]",)),
    Mutant("server: Host check off (DNS rebinding)", "led_local/server.py",
           "            if not host_allowed(host, self.extra):", "            if False:",
           (T_HOSTILE + "[Host: evil.example]",)),
    Mutant("server: tokenizing and grammar building back on the event loop", "led_local/server.py",
           "job, shape = await asyncio.to_thread(work)", "job, shape = work()",
           ("tests/test_hostile.py::test_preparing_a_request_never_blocks_the_event_loop",)),
    Mutant("bounds: a repetition's maximum below its minimum allowed", "led_local/grammar_bounds.py",
           "        if hi_n is not None and hi_n < lo_n:", "        if False:",
           (T_HOSTILE + "[grammar repetition {3,1} (llama.cpp expands it until memory runs out)]",)),
    Mutant("bounds: left recursion through empty items allowed", "led_local/grammar_bounds.py",
           "    looped = m.left_recursion()", "    looped = None",
           (T_HOSTILE + "[grammar left-recursive through an empty item (llama.cpp runs out of memory)]",)),
    Mutant("bounds: a JSON schema's allOf cycles unchecked", "led_local/grammar_bounds.py",
           "    looped = inlined_ref_cycle(schema)", "    looped = None",
           (T_HOSTILE + "[schema whose allOf refers to itself (the converter's stack overflows)]",)),
    Mutant("bounds: the grammar parser's own nesting unchecked", "led_local/grammar_bounds.py",
           "                if self.level > MAX_DEPTH:", "                if False:",
           (T_HOSTILE + "[grammar nested 5,000 deep after a broken token (found by tests/fuzz_grammar.py)]",)),
    Mutant("guard: a grammar's throwing accept unwinds through the C glue", "csrc/led_guard.cpp",
           "    try {\n        llama_sampler_accept(smpl, token);\n        return true;\n"
           "    } catch (const std::exception &) {\n        return false;\n    }",
           "    llama_sampler_accept(smpl, token);\n    return true;",
           ("tests/test_constraints.py::test_a_grammar_refusing_a_token_it_allowed_is_an_error_not_a_crash",)),
    Mutant("bounds: alternatives at one position unchecked", "led_local/grammar_bounds.py",
           "    if widest > MAX_ALTERNATIVES:", "    if False:", (T_HOSTILE + "[a grammar of 2,000 alternatives]",)),
    Mutant("generate: a prompt's bytes not checked before tokenizing", "led_local/generate.py",
           "    if size > most:", "    if False:", (T_HOSTILE + "[a 7 MB prompt, under the body limit]",)),
    Mutant("server: large allocations left to glibc's rising mmap threshold", "led_local/server.py",
           "    _map_large_allocations()\n", "",
           ("tests/test_hostile.py::test_memory_after_the_whole_hostile_run",)),
    Mutant("server: a non-streamed request whose client hangs up runs on", "led_local/server.py",
           '    gone = request.scope.get("led_local.gone")', "    gone = None",
           ("tests/test_hostile.py::test_a_non_streamed_request_whose_client_hangs_up_frees_its_slot",)),
    Mutant("server: a stream is submitted after an await (the queue bound misses streams)", "led_local/server.py",
           "        ready = driver.submit(job)", "        await asyncio.sleep(0.2)\n        ready = driver.submit(job)",
           ("tests/test_hostile.py::test_the_queue_bound_counts_streams",)),
    Mutant("scheduler: no per-token sampling budget", "led_local/scheduler.py",
           "if self.max_sample_seconds is not None and spent > self.max_sample_seconds:", "if False:",
           ("tests/test_hostile.py::test_a_grammar_too_costly_per_token_ends_with_an_error_and_the_others_go_on",)),
    Mutant("serve: SIGTERM waits for the step in progress", "led_local/server.py",
           "        s.engine.abort_decodes()  # a step's", "        pass  # a step's",
           ("tests/test_hostile.py::test_sigterm_exits_within_5_seconds_and_ends_streams_with_an_error[mid-prompt]",)),
    Mutant("serve: SIGTERM does not end the requests in flight", "led_local/commands/serve.py",
           "            driver.end_all(", "            (lambda _: None)(",
           ("tests/test_hostile.py::test_sigterm_exits_within_5_seconds_and_ends_streams_with_an_error[mid-stream]",)),
    Mutant("serve: connections that never finish their headers are kept", "led_local/commands/serve.py",
           "            super().connection_made(transport)\n            self._arm()",
           "            super().connection_made(transport)",
           ("tests/test_hostile.py::test_connections_that_never_finish_their_headers_are_closed",)),
    # --- entropy profile, eval, bench, chat, models -----------------------------------------------------------
    Mutant("entropy profile: temperature ignored", "led_local/diagnostics.py",
           "x = logits.astype(np.float64) / (temperature if temperature > 0 else 1.0)",
           "x = logits.astype(np.float64)", ("tests/test_commands.py::test_normalized_entropy",)),
    Mutant("entropy profile: verdict reads the normed lens", "led_local/diagnostics.py",
           "return float(np.mean(self.raw[self.led_blocks])) > self.final",
           "return float(np.mean(self.normed[self.led_blocks])) > self.final",
           ("tests/test_commands.py::test_entropy_profile_verdict",)),
    Mutant("eval: every problem gets the same seeds", "led_local/eval/runner.py",
           "first = seed + p_index * n + start", "first = seed + start",
           ("tests/test_eval.py::test_each_sample_has_its_own_seed",)),
    Mutant("eval: pass@k off by one", "led_local/eval/passk.py",
           "np.arange(n - c + 1, n + 1)", "np.arange(n - c, n + 1)",
           ("tests/test_eval.py::test_summary_pass_at_k_from_mixed_outcomes",)),
    Mutant("eval: standard error with ddof=0", "led_local/eval/passk.py",
           "a.std(ddof=1)", "a.std(ddof=0)", ("tests/test_eval.py::test_summary_pass_at_k_from_mixed_outcomes",)),
    Mutant("bench: the ratio inverted", "led_local/benchmark.py",
           'med["led"] / med["standard"]', 'med["standard"] / med["led"]',
           ("tests/test_commands.py::test_bench_command",)),
    Mutant("chat: think tags not marked as thinking", "led_local/commands/chat.py",
           "out.append((tag, self.inside or tag == self.OPEN))", "out.append((tag, False))",
           ("tests/test_commands.py::test_think_sections_are_told_apart_across_chunks",)),
    Mutant("chat: /reset keeps the conversation", "led_local/commands/chat.py",
           "session.turns, session.last, session.stats = [], {}, {}",
           "session.turns, session.last, session.stats = session.turns, {}, {}",
           ("tests/test_commands.py::test_chat_reset_and_history",)),
    Mutant("chat: no history file", "led_local/commands/chat.py",
           "PromptSession(history=FileHistory(str(history)))", "PromptSession()",
           ("tests/test_commands.py::test_chat_reset_and_history",)),
    # --- chat templates, tool calls, reasoning (chat.py, led_common, lazy grammars) ---------------------------
    Mutant("chat: a thinking template's <think> section left in the content", "led_local/chat.py",
           "self._parsed = rendered.tools or rendered.thinking", "self._parsed = rendered.tools",
           (T_TOOLS + "test_reasoning_content_is_split_out_for_a_thinking_template",)),
    Mutant("chat: a required call not opened in the prompt", "led_local/chat.py",
           'lead = words[0] if words else ""', 'lead = ""',
           (T_TOOLS + "test_a_named_tool_choice_calls_that_tool",)),
    Mutant("chat: a streamed call's arguments lose a character per delta", "led_local/chat.py",
           '{"index": i, "function": {"arguments": args[len(sent):]}}',
           '{"index": i, "function": {"arguments": args[len(sent) + 1:]}}',
           (T_TOOLS + "test_required_tool_calls_come_back_as_tool_calls[standard]",)),
    Mutant("constraints: a lazy grammar constrains from the start", "csrc/led_engine.c",
           "struct llama_sampler * grammar = c->grammar_lazy", "struct llama_sampler * grammar = 0",
           (T_TOOLS + "test_a_lazy_grammar_constrains_only_from_its_trigger_on",)),
    Mutant("constraints: the grammar prefill not fed", "csrc/led_engine.c",
           "for (int32_t i = 0; i < c->n_grammar_prefill; i++)", "for (int32_t i = 0; i < 0; i++)",
           (T_TOOLS + "test_a_named_tool_choice_calls_that_tool",)),
    Mutant("server: a chat's tools not rendered", "led_local/server.py",
           "chat_prompt(llama, body.messages, body.tools,", "chat_prompt(llama, body.messages, None,",
           (T_TOOLS + "test_tool_calls_through_the_official_openai_client",)),
    # --- RPC ------------------------------------------------------------------------------------------------------
    Mutant("rpc: the servers' devices not given to the model", "csrc/led_engine.c",
           "params.devices = devices;", "(void) devices;",
           ("tests/test_rpc.py::test_latent_rows_are_gathered_on_the_device_that_holds_their_block",)),
    Mutant("rpc: an endpoint without a host accepted", "led_local/rpc.py",
           "if not sep or not host or not port", "if not sep or not port",
           ("tests/test_rpc.py::test_bad_rpc_addresses_fail_before_anything_connects",)),
    Mutant("rpc: the command's --rpc not passed on", "led_local/commands/common.py",
           "dict(rpc_servers=rpc, n_gpu_layers", "dict(rpc_servers=None, n_gpu_layers",
           ("tests/test_rpc.py::test_the_command_puts_layers_on_rpc_servers",)),
    Mutant("rpc: a lost server not reported", "led_local/engine.py", "                if lost:\n",
           "                if False:\n",
           ("tests/test_rpc.py::test_a_server_that_dies_mid_generation_is_a_clear_error_and_the_process_goes_on",)),
    Mutant("rpc: the server's 503 for a lost RPC server", "led_local/server.py",
           "    if isinstance(e, ConnectionError):", "    if False:",
           ("tests/test_rpc.py::test_the_server_answers_503_when_its_rpc_server_is_gone",)),
    Mutant("rpc: rpc-server --mem not passed to the server", "led_local/rpc.py", "threads, (mem_mb or 0) << 20)",
           "threads, 0)", ("tests/test_rpc.py::test_rpc_server_mem_sets_how_layers_are_split",)),
    Mutant("models: a fetched file's sha256 not checked", "led_local/models.py",
           "if partial.stat().st_size != e.size or _sha256(partial) != e.sha256:",
           "if partial.stat().st_size != e.size:", ("tests/test_models.py",)),
    Mutant("models: a warm cache checks only the size", "led_local/models.py",
           "    if _sha256(path) != sha256:\n        return False", "    if False:\n        return False",
           ("tests/test_models.py::test_damaged_cache_of_the_right_size_is_fetched_again",)),
]


# --- the scratch copy ----------------------------------------------------------------------------------------

def installed_package() -> Path:
    """The installed led_local (imported from a neutral folder, so the repository's copy is not found)."""
    r = subprocess.run([sys.executable, "-c", "import led_local, os; print(os.path.dirname(led_local.__file__))"],
                       cwd=tempfile.gettempdir(), capture_output=True, text=True, env=_clean_env())
    if r.returncode != 0:
        sys.exit(f"mutants: led_local is not installed in {sys.executable}: {r.stderr.strip()[-300:]}")
    pkg = Path(r.stdout.strip())
    if not (pkg / "lib").is_dir():
        sys.exit(f"mutants: {pkg} has no lib/ (an editable install?). The check needs a regular install: "
                 "pip install '.[test]'")
    return pkg


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LED_LOCAL_LIB_DIR")}


def llama_headers() -> list[Path]:
    """Include folders of the patched llama.cpp in the build tree that made the installed library."""
    found = sorted(glob.glob(str(REPO / "build" / "*" / "llama.cpp-patched")))
    if not found:
        sys.exit("mutants: no build tree (build/*/llama.cpp-patched) to compile the C mutants against; "
                 "run `pip install '.[test]'` in this checkout first")
    root = Path(found[-1])
    return [root / "include", root / "ggml" / "include"]


def make_copy(pkg: Path, root: Path, mutant: Mutant | None) -> Path:
    """root/led_local: the installed package, with the mutant planted (Python) or rebuilt into lib/ (C)."""
    dest = root / "led_local"
    shutil.copytree(pkg, dest, ignore=shutil.ignore_patterns("__pycache__"))
    if mutant is None:
        return root
    if mutant.path.startswith("led_local/"):
        _plant(dest / mutant.path.removeprefix("led_local/"), mutant)
    else:
        csrc = root / "csrc"
        shutil.copytree(REPO / "csrc", csrc)
        _plant(root / mutant.path, mutant)
        cc, cxx = os.environ.get("CC", "cc"), os.environ.get("CXX", "c++")
        includes = [f"-I{p}" for p in [csrc, *llama_headers()]]
        sources = engine_sources()
        guard = root / "led_guard.o"  # the one C++ file of led_engine (csrc/led_guard.cpp)
        for cmd in ([cxx, "-std=c++17", "-O2", "-fPIC", "-c", "-Wall", "-Wextra", *includes,
                     str(csrc / "led_guard.cpp"), "-o", str(guard)],
                    [cc, "-std=c11", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra",
                     "-Werror=implicit-function-declaration", *includes,
                     *[str(root / f) for f in sources if f.endswith(".c")], str(guard),
                     f"-L{dest / 'lib'}", "-lllama", "-lggml", "-lm", "-lstdc++", "-Wl,-rpath,$ORIGIN",
                     "-o", str(dest / "lib" / "libled_engine.so")]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"the C mutant does not compile:\n{r.stderr[-2000:]}")
    return root


def engine_sources() -> list[str]:
    """led_engine's sources as CMakeLists.txt lists them (csrc/...): one list for the build and for this."""
    text = (REPO / "CMakeLists.txt").read_text()
    start = text.index("add_library(led_engine SHARED")
    body = text[start + len("add_library(led_engine SHARED"): text.index(")", start)]
    return body.split()


def _plant(path: Path, mutant: Mutant) -> None:
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise RuntimeError(f"'{mutant.old[:60]}' occurs {count} times in {mutant.path}: update the mutant")
    path.write_text(text.replace(mutant.old, mutant.new))


def run_tests(root: Path, tests: list[str], stop_first: bool) -> tuple[int, str]:
    """pytest on the repository's tests, importing led_local from root (cwd and PYTHONPATH both)."""
    env = _clean_env() | {"PYTHONPATH": str(root)}
    probe = subprocess.run([sys.executable, "-c", "import led_local; print(led_local.__file__)"], cwd=root, env=env,
                           capture_output=True, text=True)
    if not probe.stdout.startswith(str(root)):
        raise RuntimeError(f"led_local was imported from {probe.stdout.strip() or probe.stderr[-300:]}, not the "
                           "scratch copy (an editable install's import hook?)")
    cmd = [sys.executable, "-c", "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))",
           "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml"),
           *(["-x"] if stop_first else []), *[str(REPO / t) for t in tests]]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def check(mutant: Mutant, pkg: Path) -> tuple[str, str]:
    """(verdict, detail): caught, SURVIVED, or ERROR."""
    with tempfile.TemporaryDirectory(prefix="led-mutant-") as tmp:
        try:
            root = make_copy(pkg, Path(tmp), mutant)
            code, out = run_tests(root, list(mutant.tests), stop_first=True)
        except RuntimeError as e:
            return "ERROR", str(e)
    failed = [ln.split(" ")[1] for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    if code == 1:
        return "caught", (failed[0].split("::", 1)[-1] if failed else "a test failed")
    if code < 0:  # the test process was killed by a signal: the bug crashed it, which the tests also show
        return "caught", f"the test process crashed (signal {-code})"
    if code == 0:
        return "SURVIVED", "every test passed"
    return "ERROR", f"pytest exit {code}:\n{out[-1500:]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--only", default=None, help="run the mutants whose name contains this")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    a = ap.parse_args()
    mutants = [m for m in MUTANTS if a.only is None or a.only in m.name]
    if a.list:
        for m in mutants:
            print(f"{m.name}  [{m.path}]")
        return 0
    if not mutants:
        print(f"mutants: none matches {a.only!r}", file=sys.stderr)
        return 2
    pkg = installed_package()
    t0 = time.perf_counter()

    # the tests must pass on the unmutated copy, or a failure would say nothing about the mutant
    tests = sorted({t for m in mutants for t in m.tests})
    with tempfile.TemporaryDirectory(prefix="led-mutant-base-") as tmp:
        code, out = run_tests(make_copy(pkg, Path(tmp), None), tests, stop_first=False)
    if code != 0:
        print(f"mutants: the tests fail without any mutant (exit {code}); fix them first:\n{out[-3000:]}")
        return 1
    print(f"baseline: {len(tests)} test groups pass unmutated ({time.perf_counter() - t0:.0f} s)", flush=True)

    results = []
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        for m, (verdict, detail) in zip(mutants, pool.map(lambda m: check(m, pkg), mutants)):
            results.append((m, verdict))
            print(f"{verdict:8s} {m.name}  [{m.path}]" + (f"  <- {detail}" if verdict == "caught" else f"\n{detail}"),
                  flush=True)
    caught = sum(v == "caught" for _, v in results)
    print(f"{caught} of {len(results)} planted bugs caught in {time.perf_counter() - t0:.0f} s")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
