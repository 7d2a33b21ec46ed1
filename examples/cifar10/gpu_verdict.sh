#!/usr/bin/env bash
# The whole device command of the CIFAR-10 GPU verdict (examples/cifar10/README.md, "GPU verdict"):
#
#   bash examples/cifar10/gpu_verdict.sh "$OUT"               # on the GPU machine: one call, timeout_s 600
#   REHEARSAL=1 bash examples/cifar10/gpu_verdict.sh OUT_DIR  # the same steps on CPU at a tiny budget, < 3 min
#
# Steps, each timed: wheels (carried wheels into a folder) -> env.txt -> decode (the carried archive, once) ->
# compare (`bninit compare` on configs/compare_gpu.yaml in the background, each finished run appended to
# OUT_DIR/results.jsonl; SIGINT at the deadline, so it stops its runs and keeps the finished lines) -> report.md ->
# run_logs.tar.gz -> timing.json. OUT_DIR gets 7 files and no folder (the device returns 8 files, 2 folders deep).
#
# Settings (environment): SEEDS, ARMS, PARALLEL, BUDGET_S (the whole script, start to timing.json), STOP_MARGIN_S
# (SIGINT to compare this long before BUDGET_S), PYTHON, GPU_CARRY (default .gpu_carry: wheels/ and the archive),
# WHEELS, DATA, WORK_DIR (scratch: installed wheels, decoded cache, run folders; default a new folder in /tmp).
# REHEARSAL=1 (the test tests/test_gpu_verdict.py runs it): CPU, 2 seeds, 1 epoch, 300 train / 200 test images,
# width 16, 2 at once, bf16 autocast and channels_last as on the GPU, CUDA_VISIBLE_DEVICES=0 so compare takes its
# GPU branch (subprocess launcher), and a Python set up like the device's: the carried wheels only (downloaded with
# prepare_gpu_carry.sh's pip command when there is no carry folder; the installed ones, said so, if that fails too),
# no wandb, no installed lightning-bninit (examples/cifar10/rehearsal/sitecustomize.py), the package from PYTHONPATH.
set -uo pipefail

OUT_DIR=${1:?usage: [REHEARSAL=1] bash examples/cifar10/gpu_verdict.sh OUT_DIR}
now_ms() {
    if [[ -n "${EPOCHREALTIME:-}" ]]; then local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); else echo $(($(date +%s%N) / 1000000)); fi
}
T0=$(now_ms)
since_ms() { echo $(($(now_ms) - T0)); }
say() { printf '[gpu_verdict %6.1f s] %s\n' "$(awk "BEGIN{print $(since_ms)/1000}")" "$*"; }

mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 2
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
REHEARSAL=${REHEARSAL:-0}
PY=${PYTHON:-python3}
CARRY=${GPU_CARRY:-.gpu_carry}
WORK=${WORK_DIR:-$(mktemp -d /tmp/gpu_verdict.XXXXXX)}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
SITE=$WORK/site
CACHE=$WORK/cache
: > "$WORK/phases.tsv"
: > "$WORK/lines.tsv"
RESULTS=$OUT_DIR/results.jsonl

if [[ "$REHEARSAL" == 1 ]]; then
    MODE=rehearsal-cpu
    SEEDS=${SEEDS:-1-2} ARMS=${ARMS:-standard,bninit} PARALLEL=${PARALLEL:-2}
    BUDGET_S=${BUDGET_S:-170} STOP_MARGIN_S=${STOP_MARGIN_S:-30}
    # The budget, on CPU; precision (bf16-mixed), channels_last, benchmark and the rest stay those of gpu.yaml.
    BUDGET_ARGS=(--trainer.accelerator=cpu --trainer.max_epochs=1 --data.subset=300 --data.test_subset=200
                 --data.eval_batch_size=200 --model.width=16)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
    MODE=device-gpu
    SEEDS=${SEEDS:-1-8} ARMS=${ARMS:-standard,bninit} PARALLEL=${PARALLEL:-8}
    # The call's limit is 600 s; the files under $OUT come back even if it is cut off, and results.jsonl is written
    # line by line, so the margin only has to cover stopping the runs (<= 15 s) and the report (a few seconds).
    BUDGET_S=${BUDGET_S:-585} STOP_MARGIN_S=${STOP_MARGIN_S:-35}
    BUDGET_ARGS=()
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # 8 runs x 2 threads on 16 cores; the work is on the GPU
fi
# One visible GPU, named: compare's choice of launcher and of devices is the one it makes on a 1-GPU machine, in
# both modes (without it compare asks nvidia-smi; on CPU it would take the fork launcher).
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
export PYTHONUNBUFFERED=1 PIP_ROOT_USER_ACTION=ignore WANDB_MODE=${WANDB_MODE:-disabled} MPLBACKEND=${MPLBACKEND:-Agg}
STOP_AT_MS=$(((BUDGET_S - STOP_MARGIN_S) * 1000))
STOP_AFTER_RUNS=${STOP_AFTER_RUNS:-0}  # (the test of the deadline) stop compare as at the deadline after N runs

phase() {  # NAME CMD...: run and time one step
    local name=$1 start rc; shift
    start=$(since_ms)
    "$@"; rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$start" "$(since_ms)" "$rc" >> "$WORK/phases.tsv"
    say "$name: rc $rc"
    return $rc
}

# ---- wheels ---------------------------------------------------------------------------------------------------
WHEEL_SOURCE=none
HIDE=(wandb lightning-bninit)
install_wheels() {
    local dir=${WHEELS:-$CARRY/wheels}
    if ! compgen -G "$dir/*.whl" > /dev/null && [[ "$REHEARSAL" == 1 ]]; then
        say "no wheels in $dir: downloading them with prepare_gpu_carry.sh's pip command"
        dir=$WORK/wheels
        bash "$ROOT/examples/cifar10/prepare_gpu_carry.sh" --wheels-only "$dir" || rm -rf "$dir"
        WHEEL_SOURCE=downloaded
    else
        WHEEL_SOURCE=carried
    fi
    if compgen -G "$dir/*.whl" > /dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$dir"/*.whl || return 1
        local whl
        for whl in "$dir"/*.whl; do whl=${whl##*/}; HIDE+=("${whl%%-*}"); done  # carried only: hide installed ones
    elif [[ "$REHEARSAL" == 1 ]]; then
        WHEEL_SOURCE="installed (no wheels could be downloaded; jsonargparse etc. from this Python's site-packages)"
        say "warning: $WHEEL_SOURCE"
    else
        echo "gpu_verdict: no wheels in $dir (run examples/cifar10/prepare_gpu_carry.sh here, carry $CARRY)" >&2
        return 1
    fi
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    if [[ "$REHEARSAL" == 1 ]]; then  # a site-packages without what the device lacks, for every process below
        export PYTHONPATH="$ROOT:$SITE:$ROOT/examples/cifar10/rehearsal"
        BNINIT_REHEARSAL_REAL_SITES=$("$PY" "$ROOT/examples/cifar10/rehearsal/make_site.py" "$WORK/site_mirror" \
            "${HIDE[@]}") || return 1
        export BNINIT_REHEARSAL_SITE=$WORK/site_mirror BNINIT_REHEARSAL_REAL_SITES
        if "$PY" -c "import wandb" 2> /dev/null; then echo "gpu_verdict: wandb still importable" >&2; return 1; fi
    fi
}

# ---- env.txt --------------------------------------------------------------------------------------------------
write_env() {
    {
        echo "# gpu_verdict.sh $MODE, $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname 2> /dev/null)"
        echo "seeds $SEEDS, arms $ARMS, parallel $PARALLEL, budget ${BUDGET_S} s (compare stopped at" \
             "$((STOP_AT_MS / 1000)) s), extra args: ${BUDGET_ARGS[*]:-none}"
        echo "wheels: $WHEEL_SOURCE$([[ "$REHEARSAL" == 1 ]] && echo "; hidden from the rehearsal's Python: ${HIDE[*]}")"
        echo "commit: $(git -C "$ROOT" rev-parse HEAD 2> /dev/null || echo 'unknown (no git here)');" \
             "at prepare_gpu_carry.sh: $(cat "$CARRY/COMMIT" 2> /dev/null || echo unknown)"
        echo "OMP_NUM_THREADS=$OMP_NUM_THREADS CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
        echo "## uname: $(uname -a)"
        echo "## nvidia-smi"
        if command -v nvidia-smi > /dev/null; then
            nvidia-smi 2>&1
            nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
        else
            echo "(no nvidia-smi here)"
        fi
        echo "## python and packages"
        "$PY" "$ROOT/examples/cifar10/gpu_verdict.py" env $([[ "$REHEARSAL" == 1 ]] || echo --require-cuda)
        local rc=$?
        echo "## wheels installed into $SITE"
        ls "$SITE" 2> /dev/null | grep -E '\.dist-info$' || echo "(none)"
        return $rc
    } > "$OUT_DIR/env.txt" 2>&1
}

# ---- compare, stopped at the deadline -------------------------------------------------------------------------
STOPPED=false
count_lines() { if [[ -f "$RESULTS" ]]; then wc -l < "$RESULTS"; else echo 0; fi; }
COMPARE_RC=
run_compare() {
    local exp=$WORK/compare_gpu.yaml data
    data=$(cd "$(dirname "$DATA_PATH")" && pwd)/$(basename "$DATA_PATH")
    "$PY" "$ROOT/examples/cifar10/gpu_verdict.py" experiment "$ROOT/examples/cifar10/configs/compare_gpu.yaml" \
        "$exp" -- "--data.data_path=$data" "--data.cache_dir=$CACHE" "${BUDGET_ARGS[@]}" \
        || return 2
    # Job control: the background compare keeps SIGINT (a non-interactive shell would have it ignore SIGINT).
    set -m
    "$PY" -m lightning_bninit compare --config "$exp" --seeds "$SEEDS" --arms "$ARMS" --parallel "$PARALLEL" \
        --out "$RESULTS" --runs-dir "$WORK/runs" --no-progress > "$OUT_DIR/compare.log" 2>&1 &
    local pid=$! lines=0 n sent=0
    set +m
    say "compare started (pid $pid), SIGINT at $((STOP_AT_MS / 1000)) s unless done"
    while kill -0 "$pid" 2> /dev/null; do
        sleep 1
        n=$(count_lines)
        if (( n > lines )); then lines=$n; printf '%s\t%s\n' "$n" "$(since_ms)" >> "$WORK/lines.tsv"; say "$n runs done"; fi
        if (( sent == 0 && ($(since_ms) >= STOP_AT_MS || INTERRUPTED || (STOP_AFTER_RUNS > 0 && n >= STOP_AFTER_RUNS)) ))
        then
            say "deadline: SIGINT to compare"; kill -INT "$pid" 2> /dev/null; sent=$(since_ms); STOPPED=true
        elif (( sent > 0 && $(since_ms) - sent > 25000 )); then
            say "compare still running 25 s after SIGINT: SIGKILL"; kill -KILL "$pid" 2> /dev/null; sent=-1
        fi
    done
    wait "$pid"; COMPARE_RC=$?
    n=$(count_lines)
    (( n > lines )) && printf '%s\t%s\n' "$n" "$(since_ms)" >> "$WORK/lines.tsv"
    return "$COMPARE_RC"
}
INTERRUPTED=0
trap 'INTERRUPTED=1' INT TERM  # stop compare as at the deadline, then still write the report, env and timing

write_report() {
    {
        echo "<!-- gpu_verdict.sh $MODE: bninit report $RESULTS --metric test_acc --baseline standard" \
             "--treatment bninit; compare rc ${COMPARE_RC:-not run}, stopped at the deadline: $STOPPED -->"
        "$PY" -m lightning_bninit report "$RESULTS" --metric test_acc --baseline standard --treatment bninit \
            --plot "$OUT_DIR/differences.png"
    } > "$OUT_DIR/report.md" 2>&1
}

# ---- the steps (one function, read whole before it runs: editing the file meanwhile cannot break a run) --------------
main() {
    say "$MODE: out $OUT_DIR, work $WORK, python $(command -v "$PY")"
    STATUS=0
    if phase wheels install_wheels; then
        phase env write_env || STATUS=3
        DATA_PATH=${DATA:-$CARRY/cifar10-jpeg.tar.xz}
        if [[ ! -e "$DATA_PATH" && "$REHEARSAL" == 1 ]]; then  # no carry folder: the data module's own search
            DATA_PATH=$(cd "$ROOT" && "$PY" -c "import sys; sys.path.insert(0, 'examples'); \
from cifar10.data import find_data_path; print(find_data_path(None))") || DATA_PATH=
        fi
        if (( STATUS == 0 )) && phase decode "$PY" "$ROOT/examples/cifar10/data.py" "$DATA_PATH" --cache-dir "$CACHE"; then
            phase compare run_compare || STATUS=1
        elif (( STATUS == 0 )); then
            STATUS=2
        fi
    else
        STATUS=2
        phase env write_env
    fi
    phase report write_report
    # The runs' logs and result files, the experiment file and the phases: one file (the device returns at most 8).
    phase logs tar -czf "$OUT_DIR/run_logs.tar.gz" -C "$WORK" --exclude='*.ckpt' \
        $(cd "$WORK" && ls -d runs compare_gpu.yaml phases.tsv lines.tsv 2> /dev/null)
    "$PY" "$ROOT/examples/cifar10/gpu_verdict.py" timing --work "$WORK" --results "$RESULTS" --out "$OUT_DIR/timing.json" \
        "mode=$MODE" "seeds=$SEEDS" "arms=$ARMS" "parallel=$PARALLEL" "budget_s=$BUDGET_S" \
        "compare_sigint_at_s=$((STOP_AT_MS / 1000))" "stopped_at_deadline=$STOPPED" "compare_rc=${COMPARE_RC:-none}" \
        "wheels=$WHEEL_SOURCE" "total_s=$(awk "BEGIN{print $(since_ms)/1000}")"
    say "done (status $STATUS): $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
    [[ -n "${WORK_DIR:-}" ]] || rm -rf "$WORK"
    return "$STATUS"
}
main "$@"
