# pvid: the least privilege pvid needs in OpenBao (or HashiCorp Vault).
#
#   bao policy write pvid deploy/openbao/pvid-policy.hcl
#   bao token create -policy=pvid -no-default-policy -period=24h
#
# Mounts: KV v2 at `secret/` and Transit at `transit/` (pvid's defaults). If yours differ
# (PVID_BAO_KV_MOUNT / PVID_BAO_TRANSIT_MOUNT), replace the leading `secret/` and `transit/`
# of every path below. pvid touches nothing outside `preview/`, `shared/private-key` and the `preview-*` keys.

# --- key custody `sidecar`: private keys in KV v2 at preview/<id>/<svc>/private-key (and
# next-private-key while a rotation publishes a new key) -------------------------------------
# write a version, read it back (sidecar start, audit, teardown proof)
path "secret/data/preview/*" {
  capabilities = ["create", "update", "read"]
}
# custom metadata (preview, service, kid, created_at); destroy all versions at teardown; list
# for the orphan audit
path "secret/metadata/preview/*" {
  capabilities = ["create", "update", "read", "delete", "list"]
}

# --- mode: shared: the one key every shared-mode preview signs with, at shared/private-key ---
path "secret/data/shared/private-key" {
  capabilities = ["create", "update", "read"]
}
path "secret/metadata/shared/private-key" {
  capabilities = ["create", "update", "read", "delete"]
}

# --- key custody `transit`: one non-exportable key per service, preview-<id>-<svc> ---------
# create, read the public key; `config` makes it deletable; delete at teardown
path "transit/keys/preview-*" {
  capabilities = ["create", "update", "read", "delete"]
}
# sign tokens (the sidecar and `pvid token mint`)
path "transit/sign/preview-*" {
  capabilities = ["update"]
}
# orphan audit: list the mount's keys (pvid only acts on names starting with preview-)
path "transit/keys" {
  capabilities = ["list"]
}
path "transit/keys/" {
  capabilities = ["list"]
}

# --- diagnostics: on a 403, pvid looks its own token up to tell "bad token" from "missing grant"
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
