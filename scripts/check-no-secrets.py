#!/usr/bin/env python3
"""Post-test secret scan: no captured output of the test suite holds a private key or a token.

Usage: check-no-secrets.py CAPTURE_DIR REPO_ROOT

CAPTURE_DIR is what the tests wrote with PVID_TEST_CAPTURE_DIR set (scripts/test.d/30-capture.sh):
  out/             every captured output: CLI stdout/stderr, sidecar decision logs, cargo's own log
  needles/keys/    PKCS#8 DER of the private keys the tests made
  needles/tokens/  tokens the tests minted (one per file, or one per line)
The attack corpus's private keys (testdata/cases/keys/*.pem) and tokens (testdata/cases/tokens,
bursts) are needles too. A key is looked for as fragments of its private scalar in base64,
base64url (every byte alignment) and hex; a token as its signature segment. Findings name the
output file and the needle's source, never the secret. Exit 1 on any finding.
"""
import base64
import os
import sys


def scalar(der):
    """The private scalar of a P-256 or Ed25519 PKCS#8 key: the first 32-byte OCTET STRING."""
    i = der.find(b"\x04\x20")
    if i < 0 or len(der) < i + 34:
        return None
    return der[i + 2:i + 34]


def secret_fragments(secret):
    out = set()
    for off in range(3):
        for enc in (base64.b64encode(secret[off:]), base64.urlsafe_b64encode(secret[off:])):
            enc = enc.rstrip(b"=")
            usable = len(enc) // 4 * 4 - 4
            for start in range(0, max(usable - 24, 0) + 1, 4):
                out.add(enc[start:start + 24])
    for start in range(0, len(secret) - 11, 4):
        h = secret[start:start + 12].hex().encode()
        out.add(h)
        out.add(h.upper())
    return out


def token_needles(text):
    out = set()
    for line in text.split():
        parts = line.strip().split(".")
        if len(parts) == 3 and len(parts[2]) >= 40:
            out.add(parts[2].encode())
    return out


def main():
    capture, repo = sys.argv[1], sys.argv[2]
    needles = {}  # bytes -> source
    keys = tokens = 0
    key_dir = os.path.join(capture, "needles", "keys")
    for name in sorted(os.listdir(key_dir)) if os.path.isdir(key_dir) else []:
        s = scalar(open(os.path.join(key_dir, name), "rb").read())
        if s:
            keys += 1
            for f in secret_fragments(s):
                needles[f] = "private key " + name
    pem_dir = os.path.join(repo, "testdata", "cases", "keys")
    for name in sorted(os.listdir(pem_dir)):
        body = "".join(l for l in open(os.path.join(pem_dir, name)) if not l.startswith("-----"))
        s = scalar(base64.b64decode(body))
        if s:
            keys += 1
            for f in secret_fragments(s):
                needles[f] = "corpus key " + name
    token_sources = [os.path.join(capture, "needles", "tokens")]
    token_sources += [os.path.join(repo, "testdata", "cases", d) for d in ("tokens", "bursts")]
    for d in token_sources:
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            for t in token_needles(open(os.path.join(d, name), errors="replace").read()):
                tokens += 1
                needles[t] = "token signature from " + os.path.relpath(os.path.join(d, name), capture if d.startswith(capture) else repo)

    out_dir = os.path.join(capture, "out")
    files = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    if not files:
        print("secret scan: no captured output in %s (were the tests run by scripts/test?)" % out_dir)
        return 1
    findings, scanned = [], 0
    by_len = {}
    for n in needles:
        by_len.setdefault(len(n), set()).add(n)
    for name in files:
        data = open(os.path.join(out_dir, name), "rb").read()
        scanned += len(data)
        for length, group in by_len.items():
            for i in range(0, max(len(data) - length + 1, 0)):
                window = data[i:i + length]
                if window in group:
                    findings.append("%s holds a fragment of %s" % (name, needles[window]))
                    break
    print("secret scan: %d files, %d bytes of captured output; %d keys, %d tokens (%d needles)"
          % (len(files), scanned, keys, tokens, len(needles)))
    if findings:
        for f in sorted(set(findings)):
            print("LEAK: " + f)
        return 1
    print("secret scan: no private key fragment and no token signature in any output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
