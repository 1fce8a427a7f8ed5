#!/usr/bin/env bash
# Which onnxruntime flavour an install of honed leaves, asked of pip itself (.ci/run calls this after its
# install; about a minute with pip's cache warm).
#
# onnxruntime ships one import folder under several distribution names (onnxruntime, onnxruntime-gpu, ...),
# so pip puts a second flavour beside the first without a word. honed's base install names none; each
# extra names one. Checked here, in throwaway venvs (created without pip: this venv's pip drives them
# through --python):
#   1. a CUDA venv (real onnxruntime-gpu + onnxruntime-genai-cuda wheels) that installs honed, or honed[cuda],
#      keeps exactly its one flavour of each;
#   2. an empty venv that installs honed[cpu] gets exactly onnxruntime + onnxruntime-genai;
#   3. the trap the extras leave open: honed[cpu] into the CUDA venv would add onnxruntime beside
#      onnxruntime-gpu, and honed, installed there with that wheel, names both in its warning.
# What "installs" resolves to is pip's own resolver (--dry-run --report, against what each venv holds), so the
# big dependencies (torch, ...) are resolved, not unpacked; the flavour wheels and honed itself are installed
# for real, and honed's own check (honed.util.runtime_flavour) reads their metadata.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
constraints=(-c .ci/constraints.txt)
step() { echo "-- $1 ($(( $(date +%s) - start ))s)"; }

pip_into() {  # pip_into VENV ARGS...: this venv's pip acting on VENV's interpreter (pip's "Location ... is
              # ignored" lines for the local indexes a package is not in are noise here)
    local venv=$1
    shift
    python -m pip --python "$venv/bin/python" "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

new_venv() {
    python3 -m venv --without-pip "$work/$1"
    echo "$work/$1"
}

# flavours VENV [REPORT]: "package: dist dist" for each runtime import package, from what VENV holds plus what
# REPORT (pip's --report) would install; the names come from honed's own table (runtime_flavour.FLAVOURS).
flavours() {
    python - "$@" <<'EOF'
import json, re, subprocess, sys
from honed.util.runtime_flavour import FLAVOURS

norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
listing = "import importlib.metadata as m; print(*(d.metadata['Name'] for d in m.distributions()))"
held = subprocess.run([f"{sys.argv[1]}/bin/python", "-c", listing], check=True, capture_output=True,
                      text=True).stdout.split()
names = {norm(n) for n in held}
if len(sys.argv) > 2:
    names |= {norm(i["metadata"]["name"]) for i in json.load(open(sys.argv[2]))["install"]}
for package, dists in FLAVOURS.items():
    print(f"{package}: {' '.join(sorted(d for d in dists if d in names)) or '-'}")
EOF
}

expect() {  # expect WHAT EXPECTED ACTUAL
    if [[ "$2" != "$3" ]]; then
        printf 'check-install-flavours: FAILED: %s\n  expected: %s\n  got:      %s\n' \
            "$1" "${2//$'\n'/ | }" "${3//$'\n'/ | }" >&2
        exit 1
    fi
    echo "ok: $1 (${3//$'\n'/; })"
}

# honed built once, then named by its wheel ("$honed[cpu]"): each "pip install ." would build it again.
step "building honed's wheel"
python -m pip wheel -q --no-deps -w "$work/dist" . 2> >(grep -v "is ignored: it is neither" >&2)
honed=$(ls "$work"/dist/honed-*.whl)

cuda_pair=$'onnxruntime: onnxruntime-gpu\nonnxruntime_genai: onnxruntime-genai-cuda'
cpu_pair=$'onnxruntime: onnxruntime\nonnxruntime_genai: onnxruntime-genai'

# 1. A CUDA venv: the real wheels when the index has them for this platform, else stand-in metadata (said so).
step "a CUDA venv"
cuda=$(new_venv cuda)
if pip_into "$cuda" install -q --no-deps onnxruntime-gpu onnxruntime-genai-cuda; then
    echo "the CUDA venv holds the real onnxruntime-gpu and onnxruntime-genai-cuda wheels"
else
    echo "warning: no onnxruntime-gpu/onnxruntime-genai-cuda wheel for this platform;" \
        "simulating them with metadata alone" >&2
    site=$("$cuda/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for dist in onnxruntime_gpu onnxruntime_genai_cuda; do
        mkdir -p "$site/$dist-0.0.0.dist-info"
        printf 'Metadata-Version: 2.1\nName: %s\nVersion: 0.0.0\n' "${dist//_/-}" \
            >"$site/$dist-0.0.0.dist-info/METADATA"
    done
fi
expect "the CUDA venv before honed" "$cuda_pair" "$(flavours "$cuda")"
for extra in "" "[cuda]"; do
    step "resolving honed$extra in the CUDA venv"
    pip_into "$cuda" install -q --dry-run --report "$work/cuda.json" "${constraints[@]}" "$honed$extra"
    expect "'pip install honed$extra' into the CUDA venv keeps its one flavour" "$cuda_pair" \
        "$(flavours "$cuda" "$work/cuda.json")"
done
pip_into "$cuda" install -q --no-deps "$honed"  # honed itself (its runtime check needs nothing else)
"$cuda/bin/python" -c 'from honed.util.runtime_flavour import mixed_flavours as m; assert not m(), m()'
echo "ok: honed finds one flavour in the CUDA venv"

# 2. An empty venv: the CPU extra brings exactly the CPU flavour.
step "resolving honed[cpu] in an empty venv"
empty=$(new_venv empty)
pip_into "$empty" install -q --dry-run --report "$work/cpu.json" "${constraints[@]}" "$honed[cpu]"
expect "'pip install honed[cpu]' into an empty venv" "$cpu_pair" "$(flavours "$empty" "$work/cpu.json")"

# 3. The CPU extra into the CUDA venv: pip adds onnxruntime beside onnxruntime-gpu, and honed says so.
step "resolving honed[cpu] in the CUDA venv"
pip_into "$cuda" install -q --dry-run --report "$work/mixed.json" "${constraints[@]}" "$honed[cpu]"
expect "'pip install honed[cpu]' into the CUDA venv adds the CPU flavour beside it" \
    $'onnxruntime: onnxruntime onnxruntime-gpu\nonnxruntime_genai: onnxruntime-genai onnxruntime-genai-cuda' \
    "$(flavours "$cuda" "$work/mixed.json")"
pip_into "$cuda" install -q --no-deps onnxruntime
warning=$("$cuda/bin/python" -c 'from honed.util.runtime_flavour import mixed_flavours as m; print(*m())')
if ! grep -q "onnxruntime and onnxruntime-gpu are installed side by side" <<<"$warning" \
        || ! grep -qF "pip install 'honed[cuda]'" <<<"$warning"; then
    echo "check-install-flavours: FAILED: honed's warning in the mixed venv names not both flavours" \
        "and the fix: '$warning'" >&2
    exit 1
fi
echo "ok: honed warns in the mixed venv: $warning"
echo "check-install-flavours: all checks passed in $(( $(date +%s) - start ))s"
