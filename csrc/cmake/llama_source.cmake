# Obtains the pinned llama.cpp source and applies our patches; sets LED_LLAMA_SOURCE_DIR.
#
# The source is vendor/llama.cpp of the llama-cpp-python sdist (upstream commit 0c1e57098), fetched with
# the ordinary pip client and checked against a recorded sha256. Nothing of llama.cpp is committed here.
#
# Where the sdist comes from, first match wins:
#   LED_LOCAL_LLAMA_SOURCE (env or -D): an already downloaded sdist (.tar.gz) or an unpacked, unmodified
#                                       llama.cpp tree (offline builds);
#   <cache>/sources/<sdist>:            a previous download (cache = LED_LOCAL_CACHE or ~/.cache/led-local);
#   otherwise:                          `python -m pip download` into that cache.

set(LED_LLAMA_PYPI_VERSION "0.3.36")
set(LED_LLAMA_SDIST_NAME   "llama_cpp_python-${LED_LLAMA_PYPI_VERSION}.tar.gz")
set(LED_LLAMA_SDIST_SHA256 "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")

if (NOT LED_LOCAL_LLAMA_SOURCE AND DEFINED ENV{LED_LOCAL_LLAMA_SOURCE})
    set(LED_LOCAL_LLAMA_SOURCE "$ENV{LED_LOCAL_LLAMA_SOURCE}")
endif()
if (DEFINED ENV{LED_LOCAL_CACHE})
    set(_led_cache "$ENV{LED_LOCAL_CACHE}")
elseif (WIN32)
    set(_led_cache "$ENV{LOCALAPPDATA}/led-local")
else()
    set(_led_cache "$ENV{HOME}/.cache/led-local")
endif()

file(GLOB LED_LLAMA_PATCHES "${CMAKE_CURRENT_LIST_DIR}/../patches/*.patch")
list(SORT LED_LLAMA_PATCHES)

function(led_fetch_sdist out_var)
    set(sdist "${_led_cache}/sources/${LED_LLAMA_SDIST_NAME}")
    if (NOT EXISTS "${sdist}")
        find_package(Python COMPONENTS Interpreter REQUIRED)
        message(STATUS "led-local: downloading llama-cpp-python==${LED_LLAMA_PYPI_VERSION} (source of llama.cpp) with pip")
        # --no-binary for this package only: `:all:` would also compile its build tools from source
        execute_process(
            COMMAND "${Python_EXECUTABLE}" -m pip download --no-deps --no-build-isolation
                    --no-binary llama-cpp-python "llama-cpp-python==${LED_LLAMA_PYPI_VERSION}"
                    -d "${_led_cache}/sources"
            RESULT_VARIABLE rc)
        if (NOT rc EQUAL 0 OR NOT EXISTS "${sdist}")
            message(FATAL_ERROR "led-local: could not download ${LED_LLAMA_SDIST_NAME} with pip. "
                                "Download it yourself and set LED_LOCAL_LLAMA_SOURCE to its path.")
        endif()
    endif()
    set(${out_var} "${sdist}" PARENT_SCOPE)
endfunction()

if (LED_LOCAL_LLAMA_SOURCE AND IS_DIRECTORY "${LED_LOCAL_LLAMA_SOURCE}")
    set(_led_pristine "${LED_LOCAL_LLAMA_SOURCE}")
    set(_led_origin   "${LED_LOCAL_LLAMA_SOURCE}")
else()
    if (LED_LOCAL_LLAMA_SOURCE)
        set(_led_sdist "${LED_LOCAL_LLAMA_SOURCE}")
    else()
        led_fetch_sdist(_led_sdist)
    endif()
    file(SHA256 "${_led_sdist}" _led_sha)
    if (NOT _led_sha STREQUAL LED_LLAMA_SDIST_SHA256)
        message(FATAL_ERROR "led-local: ${_led_sdist} has sha256 ${_led_sha}, expected ${LED_LLAMA_SDIST_SHA256}. "
                            "Delete it and build again to download a fresh copy.")
    endif()
    set(_led_origin "${_led_sdist}")
endif()

# A patched copy is made once per (source, patches) and reused by later configures of the same build tree.
set(_led_stamp_text "${_led_origin}")
foreach (p IN LISTS LED_LLAMA_PATCHES)
    file(SHA256 "${p}" _h)
    string(APPEND _led_stamp_text ";${_h}")
endforeach()
string(SHA256 _led_stamp "${_led_stamp_text}")
set(LED_LLAMA_SOURCE_DIR "${CMAKE_BINARY_DIR}/llama.cpp-patched")
set(_led_stamp_file "${LED_LLAMA_SOURCE_DIR}.stamp")

if (EXISTS "${_led_stamp_file}")
    file(READ "${_led_stamp_file}" _led_old_stamp)
else()
    set(_led_old_stamp "")
endif()

if (NOT _led_old_stamp STREQUAL _led_stamp)
    file(REMOVE_RECURSE "${LED_LLAMA_SOURCE_DIR}" "${CMAKE_BINARY_DIR}/_llama_extract")
    if (DEFINED _led_pristine)
        file(COPY "${_led_pristine}/" DESTINATION "${LED_LLAMA_SOURCE_DIR}" PATTERN ".git" EXCLUDE)
    else()
        message(STATUS "led-local: unpacking llama.cpp from ${_led_sdist}")
        file(ARCHIVE_EXTRACT INPUT "${_led_sdist}" DESTINATION "${CMAKE_BINARY_DIR}/_llama_extract"
             PATTERNS "llama_cpp_python-${LED_LLAMA_PYPI_VERSION}/vendor/llama.cpp")
        file(RENAME "${CMAKE_BINARY_DIR}/_llama_extract/llama_cpp_python-${LED_LLAMA_PYPI_VERSION}/vendor/llama.cpp"
                    "${LED_LLAMA_SOURCE_DIR}")
        file(REMOVE_RECURSE "${CMAKE_BINARY_DIR}/_llama_extract")
        # the sdist carries a git submodule pointer that would make llama.cpp's build-info call git
        file(REMOVE "${LED_LLAMA_SOURCE_DIR}/.git")
    endif()

    find_program(LED_PATCH_EXE patch)
    find_package(Git QUIET)
    foreach (p IN LISTS LED_LLAMA_PATCHES)
        message(STATUS "led-local: applying ${p}")
        if (LED_PATCH_EXE)
            execute_process(COMMAND "${LED_PATCH_EXE}" -p1 --forward --batch -i "${p}"
                            WORKING_DIRECTORY "${LED_LLAMA_SOURCE_DIR}" RESULT_VARIABLE rc OUTPUT_QUIET)
        elseif (GIT_FOUND)
            execute_process(COMMAND "${GIT_EXECUTABLE}" apply -p1 "${p}"
                            WORKING_DIRECTORY "${LED_LLAMA_SOURCE_DIR}" RESULT_VARIABLE rc)
        else()
            message(FATAL_ERROR "led-local: neither `patch` nor `git` was found to apply ${p}")
        endif()
        if (NOT rc EQUAL 0)
            message(FATAL_ERROR "led-local: ${p} does not apply to ${_led_origin}; is it the pinned llama.cpp?")
        endif()
    endforeach()
    file(WRITE "${_led_stamp_file}" "${_led_stamp}")
endif()
