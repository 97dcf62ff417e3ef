"""The subcommands of `led-local`, one module each; `led_local.cli` assembles them."""
