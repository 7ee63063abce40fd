"""Makes load-test tokens with PyJWT: N rotating user tokens (HS256 or ES256) and, for ES256,
the key set the service fetches. Usage: gen_tokens.py USERS_FILE OUT_DIR COUNT ALG SECRET ISSUER"""

import json
import sys
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

users_file, out_dir, count, alg, secret, issuer = sys.argv[1:7]
users = [line.strip() for line in open(users_file) if line.strip()]
now = int(time.time())

key = secret
headers = None
if alg == "ES256":
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": "load-es256", "alg": "ES256", "use": "sig"})
    with open(f"{out_dir}/jwks.json", "w") as f:
        json.dump({"keys": [jwk]}, f)
    key = private
    headers = {"kid": "load-es256"}

with open(f"{out_dir}/tokens.txt", "w") as f:
    for i in range(int(count)):
        sub = users[i % len(users)]
        claims = {
            "iss": issuer, "sub": sub, "aud": "authenticated", "role": "authenticated",
            "exp": now + 7200, "iat": now, "email": f"{sub}@example.com", "aal": "aal1",
            "session_id": "00000000-0000-4000-8000-%012d" % i, "is_anonymous": False,
        }
        f.write(jwt.encode(claims, key, algorithm=alg, headers=headers) + "\n")
