#!/usr/bin/env bash
# shellcheck disable=SC2317  # the step functions are called through run_step
# One-command emulated Raspberry Pi check (issue 10, ARM part of issue 4).
#
# On an x86-64 Debian host, with no ARM hardware and no binfmt_misc:
#   1. build/reuse a Debian bookworm arm64 root (scripts/arm64-rootfs.sh; cached outside
#      the repo in $EDGECALL_ARM64_ROOT, default /work/cache/arm64-rootfs);
#   2. do what the README tells a Pi user: copy a clean tree of the project (git archive
#      HEAD, or the working tree with --tree worktree) into the root, make a venv,
#      `pip install .` (aarch64 wheels from the index; Cython kernels compiled natively by
#      the arm64 gcc with setup.py's aarch64 flags), and try the optional TFLite runtimes;
#   3. run the kernel tests inside the root (QEMU_CPU=max: NEON + dotprod execute);
#   4. cross-compile the kernels on the host with aarch64-linux-gnu-gcc against the
#      root's Python/numpy headers, run them under qemu, and write the NEON/sdot
#      disassembly report bench/arm64/neon_report.md and the Pi projection
#      bench/arm64/pi_projection.md (measured with the x86 build of the same tree);
#   5. the x86 reference: a plain host venv with the same tree installed as the README
#      says (`python3 -m venv`, `pip install .`, optional ai-edge-litert; no torch, nothing
#      from the host's site-packages);
#   6. `edgecall basecall` on a few real reads (../shared/data, bound read-only into the
#      root at /data) for every bundled model (the chemistry's default exactly as a user
#      runs it, then each engine and --variant its card offers), the TFLite test fixture
#      and the folders in EDGECALL_ARM64_EXTRA_MODELS (space separated; e.g. an imported
#      CRF model), the same on x86, compared read for read (bench/arm64/basecall.md).
# Every step is timed and logged (one log per step); the summary is printed and written
# to bench/arm64/timings.md; a failed step is named with the tail of its log.
#
# Usage: scripts/arm64-check.sh [--model DIR] [--extra-models "DIR ..."] [--reads POD5|DIR]
#            [--max-reads N] [--engines "default auto onnx native tflite"]
#            [--tree head|worktree] [--rebuild] [--skip-basecall] [--no-report] [--reuse-venv]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/arm64-rootfs.sh
source "$REPO/scripts/arm64-rootfs.sh"

CACHE="${EDGECALL_ARM64_CACHE:-$(dirname "$ARM64_ROOT")}"
SHARED="${EDGECALL_SHARED_DATA:-$(dirname "$REPO")/shared/data}"
MODEL=""; READS=""; MAX_READS=3; ENGINES="default auto onnx native tflite"; TREE="head"
EXTRA_MODELS="${EDGECALL_ARM64_EXTRA_MODELS:-}"
REBUILD=""; SKIP_BASECALL=""; WRITE_REPORT=1; REUSE_VENV=""
HOST_PY="${EDGECALL_HOST_PYTHON:-python3}"

while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL="$(realpath "$2")"; shift 2 ;;
        --extra-models) EXTRA_MODELS="$2"; shift 2 ;;
        --reads) READS="$(realpath "$2")"; shift 2 ;;
        --max-reads) MAX_READS="$2"; shift 2 ;;
        --engines) ENGINES="$2"; shift 2 ;;
        --tree) TREE="$2"; shift 2 ;;
        --rebuild) REBUILD=--rebuild; shift ;;
        --skip-basecall) SKIP_BASECALL=1; shift ;;
        --no-report) WRITE_REPORT=""; shift ;;
        --reuse-venv) REUSE_VENV=1; shift ;;   # development: keep the installed venv
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) echo "arm64-check: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

RUN_DIR="$CACHE/run"            # per-run scratch (outputs, logs), outside the repo
OUT="$REPO/bench/arm64"         # committed generated reports
mkdir -p "$RUN_DIR" "$OUT"
STEP_LOG="$RUN_DIR/steps.txt"; : > "$STEP_LOG"; export STEP_LOG
STEP_LOG_DIR="$RUN_DIR/logs"; rm -rf "$STEP_LOG_DIR"; export STEP_LOG_DIR
GUEST_SRC=/root/edgecall-src
GUEST_VENV=/root/venv
X86_VENV="$RUN_DIR/x86-venv"      # the x86 reference install (plain venv, pip install .)
TOOLS_VENV="$RUN_DIR/host-tools"  # host Cython for the cross build (not in the x86 venv)
T_START=$(date +%s)
NICENESS=$(nice)
if [ -f "$ARM64_ROOT/.edgecall-rootfs-ok" ] && [ -z "$REBUILD" ]; then
    ROOT_NOTE="arm64 root reused from the cache"
else
    ROOT_NOTE="arm64 root built from scratch in this run"
fi

copy_tree() {
    rm -rf "$ARM64_ROOT$GUEST_SRC" "$RUN_DIR/x86-src"
    mkdir -p "$ARM64_ROOT$GUEST_SRC" "$RUN_DIR/x86-src"
    if [ "$TREE" = head ]; then
        git -C "$REPO" archive --format=tar HEAD | tar -x -C "$ARM64_ROOT$GUEST_SRC"
    else  # working tree minus build artefacts and VCS data
        tar -C "$REPO" --exclude=.git --exclude=build --exclude='*.egg-info' \
            --exclude='*.so' --exclude='kernels/*.c' --exclude=__pycache__ \
            --exclude=.pytest_cache --exclude=.ruff_cache -cf - . | tar -x -C "$ARM64_ROOT$GUEST_SRC"
    fi
    cp -a "$ARM64_ROOT$GUEST_SRC/." "$RUN_DIR/x86-src/"
    echo "kernels in tree:" "$ARM64_ROOT$GUEST_SRC"/kernels/*.pyx
}

make_venv() {
    in_root /bin/sh -c "rm -rf $GUEST_VENV && python3 -m venv $GUEST_VENV"
}

pip_install_project() {
    # Exactly the README's Pi command; the build log shows the kernel compiler flags.
    local rc=0
    in_root /bin/sh -c "cd $GUEST_SRC && $GUEST_VENV/bin/pip install -v . \
        > /root/pip-install.log 2>&1" || rc=$?
    cp "$ARM64_ROOT/root/pip-install.log" "$RUN_DIR/pip-install.log"
    grep -E 'edgecall: |Successfully installed|ERROR|error:' "$RUN_DIR/pip-install.log" | tail -20
    return "$rc"
}

probe_wheels() {
    # Which runtime dependencies have aarch64 cp311 wheels (binary only, no source builds).
    in_root /bin/sh -c "
        for p in ai-edge-litert tflite-runtime pytest; do
            if $GUEST_VENV/bin/pip install -q --only-binary=:all: \$p >/tmp/pip-\$p.log 2>&1;
            then echo \"WHEEL \$p ok\"; else echo \"WHEEL \$p none: \$(tail -1 /tmp/pip-\$p.log)\"; fi
        done
        $GUEST_VENV/bin/python - <<'PY'
import importlib.metadata as md, platform, subprocess, sys
print('PYTHON', sys.version.split()[0], platform.machine())
for dist, mod in [('numpy','numpy'),('onnxruntime','onnxruntime'),('onnx','onnx'),
                  ('pod5','pod5'),('lib-pod5','lib_pod5'),('pyarrow','pyarrow'),
                  ('pysam','pysam'),('psutil','psutil'),('tqdm','tqdm'),
                  ('ai-edge-litert','ai_edge_litert.interpreter'),
                  ('tflite-runtime','tflite_runtime.interpreter'), ('torch', 'torch')]:
    try:
        ver = md.version(dist)
    except md.PackageNotFoundError:
        print('IMPORT', dist, '-', 'not installed'); continue
    # each import in its own interpreter: a crash (e.g. SIGSEGV under emulation) is reported
    res = subprocess.run([sys.executable, '-c', f'import {mod}'], capture_output=True, text=True)
    if res.returncode == 0:
        print('IMPORT', dist, ver, 'ok')
    else:
        err = (res.stderr.strip().splitlines() or [f'exit {res.returncode}'])[-1][:120]
        print('IMPORT', dist, ver, f'FAILS (exit {res.returncode}):', err)
import edgecall, pkgutil
import edgecall._kernels as k
mods = [m.name for m in pkgutil.iter_modules(k.__path__)]
print('KERNELS', ' '.join(mods) or '(none built)')
PY" | tee "$RUN_DIR/wheels.txt"
    # the device install must not pull torch (README: no torch or tensorflow on the device)
    if grep -q '^IMPORT torch [0-9]' "$RUN_DIR/wheels.txt"; then
        echo "torch is installed in the arm64 venv"; return 1
    fi
}

# x86_reference_venv: the x86 side installed as the README tells a user (plain venv,
# `pip install <tree>` with its dependencies from the index, ai-edge-litert optional).
x86_reference_venv() {
    local log="$RUN_DIR/x86-pip-install.log"
    rm -rf "$X86_VENV"
    "$HOST_PY" -m venv "$X86_VENV" || return 1
    if ! $NICE "$X86_VENV/bin/pip" install -v "$RUN_DIR/x86-src" > "$log" 2>&1; then
        tail -30 "$log"; return 1
    fi
    grep -E 'edgecall: |Successfully installed' "$log" | tail -5
    if $NICE "$X86_VENV/bin/pip" install -q ai-edge-litert >> "$log" 2>&1; then
        echo "x86: ai-edge-litert installed (tflite engine)"
    else
        echo "x86: ai-edge-litert does not install here; tflite runs are reported as n/a"
    fi
    if "$X86_VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)'; then
        echo "torch got installed into the x86 venv (the device install must not need it)"
        return 1
    fi
    "$X86_VENV/bin/python" -c 'import edgecall._kernels.conv as c, edgecall; print("x86 kernels:", c.simd(), "from", edgecall.__file__)'
}

# host_tools_venv: Cython for the host-side cross build (the x86 reference venv stays a
# plain user install; nothing is taken from the host's site-packages).
host_tools_venv() {
    if [ -x "$TOOLS_VENV/bin/cython" ]; then echo "reusing $TOOLS_VENV"; return 0; fi
    rm -rf "$TOOLS_VENV"
    "$HOST_PY" -m venv "$TOOLS_VENV" && $NICE "$TOOLS_VENV/bin/pip" install -q 'Cython>=3.0' \
        && "$TOOLS_VENV/bin/cython" --version
}

# run_kernel_tests CPU PYTHONPATH LABEL: the tree's kernel tests in the arm64 venv with
# QEMU_CPU=CPU (max = everything incl. dotprod; cortex-a76 = Pi 5; cortex-a72 = Pi 4),
# importing edgecall from PYTHONPATH ('' = the pip-installed, natively built package).
run_kernel_tests() {
    local cpu="$1" pypath="$2" label="$3" tests log="$RUN_DIR/kernel-tests-$3.txt"
    tests=$(cd "$ARM64_ROOT$GUEST_SRC" && find tests -maxdepth 1 -name 'test_kernel*.py' \
        | sort | tr '\n' ' ')
    if [ -z "$tests" ]; then echo "no kernel tests in the tree yet"; return 0; fi
    # Run from a copy without the source package so the chosen build is the one imported.
    in_root /bin/sh -c "rm -rf /root/ktest && mkdir /root/ktest && cp -r $GUEST_SRC/tests \
        $GUEST_SRC/pyproject.toml /root/ktest/" || return 1
    set +e
    QEMU_CPU="$cpu" in_root /bin/sh -c "cd /root/ktest && PYTHONPATH=$pypath \
        EDGECALL_SHARED_DATA=/data $GUEST_VENV/bin/python -c 'import edgecall._kernels.conv as c, \
        edgecall; print(\"kernels from\", edgecall.__file__, \"simd:\", c.simd())' && \
        PYTHONPATH=$pypath $GUEST_VENV/bin/python -m pytest -q -x -m 'not slow' \
        -k 'not qemu' -p no:cacheprovider $tests" > "$log" 2>&1
    local rc=$?
    set -e
    tail -6 "$log"
    if [ "$rc" -eq 0 ] && ! grep -qE '[0-9]+ passed' "$log"; then
        echo "kernel tests ($label): nothing passed (all skipped?)"; return 1
    fi
    if [ "$rc" -ne 0 ] && grep -qiE 'illegal instruction|SIGILL|core dumped|exit code 132|status 132' "$log"; then
        echo "kernel tests ($label): ILLEGAL INSTRUCTION on $cpu"
    fi
    return "$rc"
}

# flags_probe: which -march setup.py picks on an emulated Pi 5 and Pi 4 CPU.
flags_probe() {
    local cpu out ok=0
    for cpu in cortex-a76 cortex-a72; do
        out=$(QEMU_CPU="$cpu" in_root /bin/sh -c "cd $GUEST_SRC && \
            $GUEST_VENV/bin/python scripts/arm64_flags_probe.py setup.py" 2>&1 | tail -2)
        echo "$cpu: $(echo "$out" | tr '\n' ' ')"
        case "$cpu:$out" in
            cortex-a76:*armv8.2-a+dotprod*) ;;
            cortex-a72:*"-march=armv8-a"*) ;;
            *) ok=1 ;;
        esac
    done
    return "$ok"
}

# expect_sigill: a Pi 5 (+dotprod, LSE) build must not be silently usable on a Pi 4 CPU.
expect_sigill() {
    local rc=0
    cross_run pi5 cortex-a72 || rc=$?
    if [ "$rc" -ne 0 ] && grep -qiE 'illegal instruction|SIGILL' "$RUN_DIR/kernel-tests-cross-pi5.txt"; then
        echo "as expected: the Pi 5 build faults on a Cortex-A72 (Illegal instruction)"; return 0
    fi
    if [ "$rc" -eq 0 ]; then echo "note: the Pi 5 build ran on a Cortex-A72 model"; return 0; fi
    echo "unexpected failure (not SIGILL)"; return 1
}

cross_build() {
    # Host-side cross compile with Debian's aarch64 gcc (issue 4's ARM check).
    "$TOOLS_VENV/bin/python" "$REPO/scripts/arm64_cross.py" --src "$RUN_DIR/x86-src" \
        --root "$ARM64_ROOT" --venv "$GUEST_VENV" --out "$RUN_DIR/cross"
}

# cross_run TAG CPU: the cross-built .so files (pi5 or pi4 flags) loaded by the emulated
# arm64 Python on the matching CPU model, running the kernel tests.
cross_run() {
    local tag="$1" cpu="$2"
    rm -rf "$ARM64_ROOT/root/cross-$tag"
    cp -r "$RUN_DIR/cross/$tag/pkg" "$ARM64_ROOT/root/cross-$tag"
    run_kernel_tests "$cpu" "/root/cross-$tag" "cross-$tag"
}

neon_report() {
    local native_so
    native_so=$(find "$ARM64_ROOT$GUEST_VENV/lib" -path '*edgecall/_kernels/*.so' 2>/dev/null | sort)
    # shellcheck disable=SC2086  # one argument per .so file
    "$HOST_PY" "$REPO/scripts/arm64_neon_report.py" --native $native_so \
        --cross "$RUN_DIR"/cross/pi5/pkg/edgecall/_kernels/*.so \
        --cross-pi4 "$RUN_DIR"/cross/pi4/pkg/edgecall/_kernels/*.so \
        --flags "$(cat "$RUN_DIR/cross/pi5/flags.txt" 2>/dev/null || echo '?')" \
        --out "${WRITE_REPORT:+$OUT/neon_report.md}" > "$RUN_DIR/neon_report.md"
    grep -E '^Totals|^## |^### ' "$RUN_DIR/neon_report.md"
}

# sdot_in SECTION: sum of innermost-loop sdot/udot counts in one section of the NEON report.
sdot_in() {
    awk -v sec="$1" '/^## /{on = index($0, sec) > 0}
        on && /^Totals/ {if (match($0, /sdot\/udot: [0-9]+/)) n += substr($0, RSTART + 11, RLENGTH - 11)}
        END {print n + 0}' "$RUN_DIR/neon_report.md"
}

# pi_projection: bench/pi_projection.py run with the x86 build of this tree (from a folder
# without the source package, so the installed, compiled edgecall is the one measured);
# its Pi 5 int8 figures assume the native int8 tile uses sdot, checked in the NEON report.
pi_projection() {
    local dir="$RUN_DIR/projection" models=() card native pi5
    rm -rf "$dir"; mkdir -p "$dir/bench"
    cp "$RUN_DIR/x86-src/bench/pi_projection.py" "$dir/bench/"
    for card in "$RUN_DIR"/x86-src/models/*/card.toml; do models+=("$(dirname "$card")"); done
    (cd "$dir" && OMP_NUM_THREADS=1 $NICE "$X86_VENV/bin/python" bench/pi_projection.py \
        --models "${models[@]}" --engines onnx native --out "$dir/pi_projection.md" \
        --json "$dir/pi_projection.json") > "$dir/log.txt" 2>&1 || { tail -20 "$dir/log.txt"; return 1; }
    grep -E '^\| ' "$dir/pi_projection.md" | head -4
    if [ -n "$WRITE_REPORT" ]; then cp "$dir/pi_projection.md" "$dir/pi_projection.json" "$OUT/"; fi
    native=$(sdot_in "Built natively"); pi5=$(sdot_in "for a Pi 5")
    echo "sdot/udot in innermost loops: native build $native, cross-built Pi 5 $pi5"
    if [ "$native" -eq 0 ] || [ "$pi5" -eq 0 ]; then
        echo "the projection assumes sdot in the Pi 5 native int8 kernels; the build has none"
        return 1
    fi
}

# basecall_compare: every bundled model, the TFLite fixture and EXTRA_MODELS, every engine
# and variant, arm64 vs the x86 reference venv (scripts/arm64_basecall.py).
basecall_compare() {
    local extra=() fixture="$RUN_DIR/x86-src/tests/data/tflite" d
    [ -f "$fixture/card.toml" ] && extra+=("$fixture")
    for d in $EXTRA_MODELS; do extra+=("$(realpath "$d")"); done
    [ -n "$EXTRA_MODELS" ] && echo "extra models (EDGECALL_ARM64_EXTRA_MODELS): $EXTRA_MODELS"
    EDGECALL_BIND="$SHARED:/data" "$X86_VENV/bin/python" "$REPO/scripts/arm64_basecall.py" \
        --root "$ARM64_ROOT" --venv "$GUEST_VENV" --x86-src "$RUN_DIR/x86-src" \
        --x86-venv "$X86_VENV" --run-dir "$RUN_DIR" --shared "$SHARED" --engines "$ENGINES" \
        --max-reads "$MAX_READS" ${MODEL:+--model "$MODEL"} ${READS:+--reads "$READS"} \
        --extra-models "${extra[@]}" --out "${WRITE_REPORT:+$OUT/basecall.md}"
}

# failure_report: each failed step's name and the tail of its log (tests/test_arm64.py
# quotes these blocks when the check fails).
failure_report() {
    local name log
    [ -f "$STEP_LOG_DIR/failed.tsv" ] || return 0
    while IFS=$'\t' read -r name log; do
        echo
        echo "--- FAILED STEP: $name (log: $log), last 25 lines ---"
        tail -25 "$log" 2>/dev/null || echo "(no log)"
        echo "--- end of $name ---"
    done < "$STEP_LOG_DIR/failed.tsv"
}

# Everything below runs from one function so that editing this file while it runs
# (bash reads scripts incrementally) cannot derail a run in progress.
main() {
    FAILED=0
    run_step() { step "$@" || FAILED=$((FAILED + 1)); }

    if ! build_rootfs $REBUILD; then
        echo "arm64-check: the arm64 root could not be built (see above)"
        failure_report; return 1
    fi
    if [ -n "$REUSE_VENV" ] && [ -x "$ARM64_ROOT$GUEST_VENV/bin/edgecall" ]; then
        # keep the tree the venv was built from, so tests and kernels match
        echo "reusing the installed venv $GUEST_VENV and its tree (--reuse-venv)" \
            | tee -a "$STEP_LOG"
    else
        run_step "copy clean project tree ($TREE) into root" copy_tree
        run_step "venv (python3 -m venv)" make_venv
        run_step "pip install . (aarch64 wheels + native kernels)" pip_install_project
    fi
    if [ -z "$REUSE_VENV" ] || [ ! -x "$X86_VENV/bin/edgecall" ]; then
        run_step "x86 reference: python3 -m venv + pip install ." x86_reference_venv
    fi
    run_step "host Cython for the cross build (own venv)" host_tools_venv
    run_step "optional wheels + imports" probe_wheels
    run_step "kernel tests, pip-built kernels, QEMU_CPU=max" run_kernel_tests max "" native-max
    run_step "kernel tests, pip-built kernels, cortex-a76 (Pi 5)" run_kernel_tests cortex-a76 "" native-a76
    run_step "cross-compile kernels (aarch64-linux-gnu-gcc, pi5+pi4)" cross_build
    run_step "cross-built pi5 kernels under qemu cortex-a76" cross_run pi5 cortex-a76
    run_step "cross-built pi4 kernels under qemu cortex-a72" cross_run pi4 cortex-a72
    run_step "setup.py -march choice on cortex-a76 / cortex-a72" flags_probe
    run_step "Pi 5 build on a Pi 4 CPU model (expect SIGILL)" expect_sigill
    run_step "NEON/sdot disassembly report" neon_report
    run_step "Pi projection (x86 build of this tree) + sdot check" pi_projection
    if [ -z "$SKIP_BASECALL" ]; then
        run_step "basecall arm64 vs x86, every model/engine/variant" basecall_compare
    fi

    TOTAL=$(( $(date +%s) - T_START ))
    echo
    echo "=== arm64-check timings (QEMU_CPU=$QEMU_CPU, root $ARM64_ROOT) ==="
    cat "$STEP_LOG"
    echo "total: ${TOTAL}s, failed steps: $FAILED"
    failure_report
    if [ -n "$WRITE_REPORT" ]; then
        {
            echo "# arm64 check timings"
            echo
            echo "Generated by \`scripts/arm64-check.sh\` on $(date -u +%FT%TZ) (host: $(nproc) cores," \
                 "emulation: proot + qemu-aarch64-static, QEMU_CPU=$QEMU_CPU, niceness" \
                 "$NICENESS (+${EDGECALL_NICE:-10} for the emulated steps), shared with other" \
                 "jobs). Tree: $TREE ($(git -C "$REPO" rev-parse --short HEAD)); $ROOT_NOTE."
            echo
            echo '```'
            cat "$STEP_LOG"
            echo "total: ${TOTAL}s, failed steps: $FAILED"
            echo '```'
            if [ -f "$RUN_DIR/wheels.txt" ]; then
                echo; echo "## What installs on arm64 (Debian bookworm, Python 3.11, pip from PyPI)"
                echo; echo '```'; cat "$RUN_DIR/wheels.txt"; echo '```'
            fi
        } > "$OUT/timings.md"
    fi
    return $((FAILED > 0))
}

main
exit $?
