//! Works out which algorithm a `--jwt-public-key` PEM file is for.
//!
//! `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo) is used by RSA, EC and Ed25519 keys
//! alike, so the PEM label cannot tell them apart; the algorithm OID inside the DER can. We
//! read just that OID (and the curve OID of an EC key) with a tiny DER walker, so an operator
//! needs no `--jwt-algorithm` flag, and a P-384 key or a private key is refused at start-up
//! instead of failing every handshake later. `jsonwebtoken` then parses the key for real.

use base64::Engine;

use super::value::PublicKeyAlgorithm;

/// rsaEncryption, 1.2.840.113549.1.1.1
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 (P-256), 1.2.840.10045.3.1.7
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// id-Ed25519, 1.3.101.112
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// Why a PEM file is not a public key customws can verify with. Each message tells the
/// operator what to do instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyTypeError {
    #[error("no \"-----BEGIN ...-----\" PEM block found")]
    NotPem,
    #[error("this is a private key; pass the public key (openssl pkey -in KEY -pubout)")]
    PrivateKey,
    #[error(
        "this is a certificate; extract its public key (openssl x509 -in CERT -pubkey -noout)"
    )]
    Certificate,
    #[error("unsupported PEM block \"{0}\"; expected \"PUBLIC KEY\" or \"RSA PUBLIC KEY\"")]
    UnsupportedLabel(String),
    #[error("the PEM body is not valid base64 DER")]
    BadEncoding,
    #[error("the EC key is not on curve P-256 (only ES256 is supported)")]
    UnsupportedCurve,
    #[error("unsupported key algorithm (supported: RSA for RS256, EC P-256 for ES256, Ed25519 for EdDSA)")]
    UnsupportedAlgorithm,
}

/// Detects the algorithm of the first PEM block in `pem`.
pub fn detect_algorithm(pem: &[u8]) -> Result<PublicKeyAlgorithm, KeyTypeError> {
    let text = std::str::from_utf8(pem).map_err(|_| KeyTypeError::NotPem)?;
    let (label, body) = first_block(text).ok_or(KeyTypeError::NotPem)?;
    match label {
        // PKCS#1 is RSA by definition.
        "RSA PUBLIC KEY" => return Ok(PublicKeyAlgorithm::Rs256),
        "PUBLIC KEY" => {}
        "CERTIFICATE" | "TRUSTED CERTIFICATE" => return Err(KeyTypeError::Certificate),
        l if l.ends_with("PRIVATE KEY") => return Err(KeyTypeError::PrivateKey),
        other => return Err(KeyTypeError::UnsupportedLabel(other.to_owned())),
    }
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| KeyTypeError::BadEncoding)?;
    let (algorithm, curve) = spki_oids(&der).ok_or(KeyTypeError::BadEncoding)?;
    match algorithm {
        OID_RSA => Ok(PublicKeyAlgorithm::Rs256),
        OID_ED25519 => Ok(PublicKeyAlgorithm::EdDsa),
        OID_EC if curve == Some(OID_P256) => Ok(PublicKeyAlgorithm::Es256),
        OID_EC => Err(KeyTypeError::UnsupportedCurve),
        _ => Err(KeyTypeError::UnsupportedAlgorithm),
    }
}

/// Returns the label and the base64 body of the first `-----BEGIN X-----` block.
fn first_block(text: &str) -> Option<(&str, &str)> {
    let start = text.find("-----BEGIN ")?;
    let after_begin = text.get(start + "-----BEGIN ".len()..)?;
    let label_end = after_begin.find("-----")?;
    let label = after_begin.get(..label_end)?;
    let body_and_rest = after_begin.get(label_end + "-----".len()..)?;
    let end = body_and_rest.find("-----END ")?;
    Some((label.trim(), body_and_rest.get(..end)?))
}

/// SubjectPublicKeyInfo ::= SEQUENCE { algorithm SEQUENCE { OID, params ANY OPTIONAL }, ... }.
/// Returns the algorithm OID and, when the parameters are an OID (an EC curve), that too.
fn spki_oids(der: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (spki, _) = read_tlv(der, 0x30)?;
    let (algorithm_identifier, _) = read_tlv(spki, 0x30)?;
    let (oid, params) = read_tlv(algorithm_identifier, 0x06)?;
    let curve = read_tlv(params, 0x06).map(|(curve, _)| curve);
    Some((oid, curve))
}

/// Reads one DER element with the expected tag; returns its contents and what follows it.
fn read_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    rest.split_at_checked(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC_P256: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZLQ4+nb7Sc+d0qhjoYgIeBtqhxxy
s3yHfwlvG+Wdadm2abYILSsWmBo2OEg9rbLLggaH2xMDd3kaC65FsCSKrg==
-----END PUBLIC KEY-----
";
    const EC_P384: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAENulEHj3E5004oTRGx48y7hSniQkC3g8a
EyGcoxuPastlnpMaSG/zqUtOaNzUZE7n7K/ozWXUrBfqI/BS0P7FqFm23ZLjkiDk
fsXhanyQADuC6mwCgBAPpifGcpa9eBmU
-----END PUBLIC KEY-----
";
    const ED25519: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAFmgCuDkq99ZQkiULCHWdRVO8Hlj/qrVEI88kne+YPmw=
-----END PUBLIC KEY-----
";

    #[test]
    fn detects_by_oid() {
        assert_eq!(
            detect_algorithm(EC_P256.as_bytes()),
            Ok(PublicKeyAlgorithm::Es256)
        );
        assert_eq!(
            detect_algorithm(ED25519.as_bytes()),
            Ok(PublicKeyAlgorithm::EdDsa)
        );
        assert_eq!(
            detect_algorithm(EC_P384.as_bytes()),
            Err(KeyTypeError::UnsupportedCurve)
        );
        assert_eq!(
            detect_algorithm(
                b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n"
            ),
            Ok(PublicKeyAlgorithm::Rs256)
        );
    }

    #[test]
    fn refuses_non_public_keys() {
        assert_eq!(
            detect_algorithm(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"),
            Err(KeyTypeError::PrivateKey)
        );
        assert_eq!(
            detect_algorithm(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"),
            Err(KeyTypeError::Certificate)
        );
        assert_eq!(detect_algorithm(b"hello"), Err(KeyTypeError::NotPem));
        assert_eq!(
            detect_algorithm(b"-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----"),
            Err(KeyTypeError::BadEncoding)
        );
    }

    #[test]
    fn der_walker_never_panics_on_truncation() {
        let der = base64::engine::general_purpose::STANDARD
            .decode("MCowBQYDK2VwAyEAFmgCuDkq99ZQkiULCHWdRVO8Hlj/qrVEI88kne+YPmw=")
            .unwrap();
        for cut in 0..der.len() {
            let _ = spki_oids(&der[..cut]);
        }
        assert!(spki_oids(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
    }
}
