#!/usr/bin/env bash
# Runs the native-core tests against a build of sepfl._core instrumented with
# AddressSanitizer and UndefinedBehaviorSanitizer (CMake option SEPFL_SANITIZE).
# Fails when the build fails, a test fails, or a sanitizer reports anything.
#
#   tests/sanitize.sh [extra pytest arguments]
#
# The regular development module python/sepfl/_core*.so is left untouched: the
# sanitized module is built in build/sanitize and loaded from a temporary copy
# of the Python package. Environment: PYTHON (default: python),
# SANITIZE_BUILD_DIR, and ASAN_OPTIONS / UBSAN_OPTIONS, which are appended to
# the defaults below (UBSAN_OPTIONS=halt_on_error=0 lists every report instead
# of stopping at the first).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
python=${PYTHON:-python}
build=${SANITIZE_BUILD_DIR:-build/sanitize}

# SEPFL_INPLACE=OFF keeps the module in the build directory instead of writing
# it over python/sepfl/_core*.so.
# float-cast-overflow is not part of GCC's -fsanitize=undefined; it catches
# NaN or out-of-range floats converted to integers.
cmake -S . -B "$build" -DSEPFL_SANITIZE=ON -DSEPFL_CUDA=OFF -DSEPFL_INPLACE=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=float-cast-overflow" \
  -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" \
  $(command -v ninja >/dev/null && echo -G Ninja) >/dev/null
cmake --build "$build" --target _core
module=$(ls "$build"/_core*.so)
ldd "$module" | grep libasan >/dev/null || { echo "sanitize.sh: $module lacks ASan" >&2; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The Python sources with the sanitized _core and no other native module
# (an uninstrumented _cuda would only add noise).
cp -r python/sepfl "$scratch/sepfl"
find "$scratch/sepfl" -name '*.so' -delete
cp "$module" "$scratch/sepfl/"

# The interpreter is not instrumented, so the ASan runtime must be loaded first.
# Python's own allocations look like leaks at exit, so leak checking is off.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONPATH="$scratch${PYTHONPATH:+:$PYTHONPATH}"

"$python" -c 'import sys, sepfl._core as m; sys.exit(not m.__file__.startswith(sys.argv[1]))' \
  "$scratch" || { echo "sanitize.sh: sepfl._core is not the sanitized module" >&2; exit 1; }

# Reports are written to file descriptor 2 by native code; --capture=sys leaves
# it alone so they reach the log even when a report ends the process. The crash
# table's children inherit the sanitizers, and a report makes a child exit
# non-zero, failing its case. Its xfail cases are known memory errors.
status=0
"$python" -m pytest -q -p no:cacheprovider -p no:faulthandler --capture=sys -m "not xfail" \
  tests/test_ops.py tests/test_core_fuzz.py tests/test_native_crash.py "$@" \
  2>"$scratch/stderr" || status=$?
cat "$scratch/stderr" >&2

if grep -Eq 'runtime error:|ERROR: AddressSanitizer|SUMMARY: [A-Za-z]+Sanitizer' "$scratch/stderr"; then
  echo "sanitize.sh: the sanitizers reported errors (above)" >&2
  status=1
fi
echo "sanitize.sh: exit status $status after $((SECONDS - start)) s"
exit "$status"
