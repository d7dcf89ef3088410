"""Registers paysync's webhook route of every policy in a policies file (or directory) with
its local Stripe emulator, as `scripts/run` does for PAYSYNC_POLICIES: a policy whose apiBase
is a localstripe on 127.0.0.1 gets its deliveries at /webhooks/stripe/<policy>, signed with the
first of its webhook secrets. Policies on real Stripe are left alone (register their endpoints
in the Dashboard).

Usage: python register-webhooks.py POLICIES LISTEN_ADDRESS
"""

import base64
import pathlib
import sys
import urllib.parse
import urllib.request

import yaml


def documents(path):
    files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
    for file in files:
        for document in yaml.safe_load_all(file.read_text()):
            if isinstance(document, dict):
                yield document


def secret_value(secret, key):
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None


def main(policies_path, listen):
    docs = list(documents(pathlib.Path(policies_path)))
    secrets = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Secret"}
    for policy in (d for d in docs if d.get("kind") == "SyncPolicy"):
        name, spec = policy["metadata"]["name"], policy.get("spec") or {}
        base = spec.get("apiBase", "https://api.stripe.com")
        if not base.startswith("http://127.0.0.1:"):
            continue
        ref = spec.get("stripeSecretRef") or {}
        secret = secrets.get(ref.get("name"))
        raw = secret_value(secret, ref.get("webhookSecretsKey", "webhookSecrets")) if secret else None
        if not raw:
            print(f"policy {name}: no webhook secret; not registered", file=sys.stderr)
            continue
        url = f"http://{listen}/webhooks/stripe/{name}"
        data = urllib.parse.urlencode({"url": url, "secret": raw.split(",")[0].strip()}).encode()
        urllib.request.urlopen(f"{base}/_config/webhooks/paysync-{name}", data=data, timeout=10)
        print(f"{base} delivers webhooks of policy {name} to {url}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
