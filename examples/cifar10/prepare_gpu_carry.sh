#!/usr/bin/env bash
# One-time preparation, here, of what the GPU verdict's device call carries (examples/cifar10/README.md, "GPU verdict").
#
#   bash examples/cifar10/prepare_gpu_carry.sh                    # .gpu_carry/: the CIFAR-10 archive and the wheels
#   bash examples/cifar10/prepare_gpu_carry.sh --wheels-only DIR  # only the wheels, into DIR (the rehearsal in CI)
#
# .gpu_carry/ is git-ignored; the device call names it in `carry`. Run this in the checkout that the device tool sends
# (the session's own), with this branch checked out there. The archive is looked for at $CIFAR10_ARCHIVE, then
# shared/data/, ../shared/data/ and /work/shared/data/; it is copied (a symbolic link would travel only as a link).
set -euo pipefail
cd "$(dirname "$0")/../.."

# What the GPU machine lacks for `bninit compare` on main.py (LightningCLI needs jsonargparse[signatures]); pure-Python
# wheels, the versions tested here. Everything else main.py and bninit need is on the device (KINDS.md): torch,
# lightning, torchvision, torchmetrics, typing-extensions, pyyaml, numpy, scipy, rich, matplotlib, pillow.
WHEELS=("jsonargparse==4.53.0" "docstring-parser==0.18.0" "typeshed-client==2.15.0")
ARCHIVE_SHA256=c20cedc58b2083a1705642fc443e86740d29ba7e569a5f488435c732980006ca
CARRY=.gpu_carry
PY=${PYTHON:-python3}

download_wheels() {  # DIR: the pip command of the device README (python 3.12, manylinux x86-64, no dependencies)
    local dir=$1
    rm -rf "$dir" && mkdir -p "$dir"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "${WHEELS[@]}"
    # Their requirements (typeshed-client: typing-extensions, which the device has); a missing one would show here.
    "$PY" - "$dir" <<'PY'
import sys, zipfile, pathlib
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
    print(f"{whl.name}: requires {[r for r in reqs if 'extra ==' not in r] or 'nothing'}")
PY
}

if [[ "${1:-}" == "--wheels-only" ]]; then
    download_wheels "${2:?usage: prepare_gpu_carry.sh --wheels-only DIR}"
    exit 0
fi

archive=""
for candidate in "${CIFAR10_ARCHIVE:-}" shared/data/cifar10-jpeg.tar.xz ../shared/data/cifar10-jpeg.tar.xz \
                 /work/shared/data/cifar10-jpeg.tar.xz; do
    if [[ -n "$candidate" && -f "$candidate" ]]; then archive=$candidate; break; fi
done
[[ -n "$archive" ]] || { echo "prepare_gpu_carry: no cifar10-jpeg.tar.xz found; set CIFAR10_ARCHIVE" >&2; exit 2; }
sha=$(sha256sum "$archive" | cut -d' ' -f1)
[[ "$sha" == "$ARCHIVE_SHA256" ]] || { echo "prepare_gpu_carry: $archive has sha256 $sha, expected $ARCHIVE_SHA256" >&2; exit 2; }

mkdir -p "$CARRY"
git check-ignore -q "$CARRY" || { echo "prepare_gpu_carry: $CARRY is not git-ignored; it must be to be carried" >&2; exit 2; }
rm -f "$CARRY"/*.npz  # a decoded cache (185 MB) would not fit the 64 MiB a call carries
cp "$archive" "$CARRY/cifar10-jpeg.tar.xz"
download_wheels "$CARRY/wheels"
# The device gets no .git: env.txt reports the commit (and whether the tree differed from it) recorded here.
echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!.gpu_carry' || echo ' plus uncommitted changes')" > "$CARRY/COMMIT"

carried=$(du -sb "$CARRY" | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
echo "prepare_gpu_carry: $CARRY $((carried / 1024)) KiB (archive + ${#WHEELS[@]} wheels); working tree that travels" \
     "$((tree / 1024)) KiB; together $(((carried + tree) / 1048576)) MiB of the 64 MiB a call may carry"
if (( carried + tree > 60 * 1048576 )); then
    echo "prepare_gpu_carry: too close to the 64 MiB limit" >&2; exit 2
fi
