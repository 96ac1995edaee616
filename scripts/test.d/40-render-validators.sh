# Validators for `pvid render` output (crates/pvid-render/tests/api/validators.rs):
# kubernetes-validate (Kubernetes JSON schemas, --strict), check-jsonschema (Compose spec, and
# pvid's own Linkerd schemas), cloudcoil-models-istio (Istio models). Installed into a venv under
# $PVID_CI_TMP; a cold pip cache downloads ~120 MB, so allow a few minutes.
_render_venv="$PVID_CI_TMP/render-validators"
if [ ! -x "$_render_venv/bin/kubernetes-validate" ] || [ ! -x "$_render_venv/bin/check-jsonschema" ]; then
  python3 -m venv "$_render_venv"
  "$_render_venv/bin/pip" install -q --disable-pip-version-check \
    'kubernetes-validate==1.37.0' 'check-jsonschema==0.39.0' 'cloudcoil-models-istio==1.24.2.1'
fi
"$_render_venv/bin/python" -c 'import cloudcoil.models.istio.security.v1, yaml'
export PVID_RENDER_VALIDATORS="$_render_venv/bin"
