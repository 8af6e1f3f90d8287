#!/bin/sh
# Makes a throwaway PKI for NBD over TLS in DIR (default: ./pki), with openssl:
#   DIR/ca-cert.pem, ca-key.pem          a CA
#   DIR/server-cert.pem, server-key.pem  the agent's certificate, for localhost and 127.0.0.1
#   DIR/client-cert.pem, client-key.pem  a client certificate signed by the CA
#   DIR/other-ca/                        a second CA and a client certificate it signed
# DIR itself is laid out as libnbd (?tls-certificates=DIR) and qemu (tls-creds-x509 dir=DIR)
# expect of a client: ca-cert.pem, client-cert.pem, client-key.pem.
# Used by the tests and shown in the README's how-to; for production, use your own CA.
set -eu
dir=${1:-pki}
days=${DAYS:-30}
mkdir -p "$dir/other-ca"
cd "$dir"

ca() { # ca PREFIX SUBJECT
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1-key.pem"
    openssl req -new -x509 -days "$days" -key "$1-key.pem" -out "$1-cert.pem" -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}

leaf() { # leaf PREFIX SUBJECT CA_PREFIX EXTENSIONS
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1-key.pem"
    openssl req -new -key "$1-key.pem" -out "$1.csr" -subj "/CN=$2"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "$4" >"$1.ext"
    openssl x509 -req -days "$days" -in "$1.csr" -CA "$3-cert.pem" -CAkey "$3-key.pem" \
        -CAcreateserial -out "$1-cert.pem" -extfile "$1.ext"
    rm -f "$1.csr" "$1.ext"
}

ca ca "multisnap test CA"
leaf server localhost ca "extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
leaf client "multisnap test client" ca "extendedKeyUsage=clientAuth"
ca other-ca/ca "another CA"
leaf other-ca/client "client of another CA" other-ca/ca "extendedKeyUsage=clientAuth"
chmod 600 ./*-key.pem other-ca/*-key.pem
