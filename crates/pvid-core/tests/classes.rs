//! Every case of `testdata/cases` generalised to its class: if one spelling of a duplicate
//! member, one non-canonical base64url form, one `none` spelling or one out-of-range number is
//! refused, every other one must be too. Tokens are signed here with the corpus's own keys
//! (`testdata/cases/keys`) and verified with the corpus's harness (preview pr-1, callee orders),
//! so a variant differs from an accepted token only by the trait under test.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pvid_core::key::Jwks;
use pvid_core::{Algorithm, PreviewId, ReasonCode, SigningKey, Verifier, extract_bearer};
use serde_json::{Value, json};
use std::path::PathBuf;
use zeroize::Zeroizing;

const NOW: f64 = 1_796_299_200.0;
/// The P-256 group order n, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
/// The Ed25519 group order L, little-endian.
const ED25519_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

// === Harness ===

fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/cases")
}

fn verifier(jwks_file: &str) -> Verifier {
    let jwks: Jwks = serde_json::from_slice(&std::fs::read(cases_dir().join(jwks_file)).unwrap()).unwrap();
    let preview: PreviewId = "pr-1".parse().unwrap();
    let issuers: Vec<String> = ["api", "web", "worker", "orders"].iter().map(|s| format!("preview-pr-1-{s}")).collect();
    Verifier::from_jwks(&jwks, &preview, &issuers, vec!["preview-pr-1".into(), "preview-pr-1-orders".into()]).unwrap()
}

/// A corpus private key (PKCS#8 PEM).
fn key(kid: &str) -> SigningKey {
    let pem = std::fs::read_to_string(cases_dir().join(format!("keys/{kid}.pem"))).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = Zeroizing::new(STANDARD.decode(body).unwrap());
    let alg = if kid.contains("web") { Algorithm::EdDSA } else { Algorithm::ES256 };
    SigningKey::from_pkcs8(alg, kid.into(), der).unwrap()
}

fn api() -> SigningKey {
    key("pr-1-api-1")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn header(k: &SigningKey) -> Value {
    json!({"alg": k.algorithm().as_str(), "typ": "JWT", "kid": k.kid()})
}

fn claims() -> Value {
    json!({"iss": "preview-pr-1-api", "sub": "api", "aud": "preview-pr-1-orders", "iat": NOW - 10.0,
           "nbf": NOW - 10.0, "exp": NOW + 290.0, "jti": "class-1"})
}

fn with(mut v: Value, k: &str, x: Value) -> Value {
    v[k] = x;
    v
}

fn without(mut v: Value, k: &str) -> Value {
    v.as_object_mut().unwrap().remove(k);
    v
}

/// Signs the exact header and claims bytes given (so duplicates and odd spellings survive).
fn sign_raw(k: &SigningKey, header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = k.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&sig))
}

fn sign(k: &SigningKey, header: &Value, claims: &Value) -> String {
    sign_raw(k, header.to_string().as_bytes(), claims.to_string().as_bytes())
}

/// The reason a token gets (`ok` when accepted as api).
fn reason(token: &str) -> ReasonCode {
    reason_with(&verifier("jwks/pr-1.json"), token)
}

fn reason_with(v: &Verifier, token: &str) -> ReasonCode {
    match v.verify(token, NOW) {
        Ok(ok) => {
            assert_eq!(ok.caller.as_str(), "api", "accepted as another caller");
            ReasonCode::Ok
        }
        Err(rej) => {
            assert!(!rej.detail.contains(token), "the refusal quotes the token");
            rej.reason
        }
    }
}

/// Asserts every `(label, token)` gets `want`, and reports all misses at once.
fn expect_all(class: &str, want: ReasonCode, variants: &[(String, String)]) {
    assert!(!variants.is_empty(), "{class}: no variant generated");
    let misses: Vec<String> = variants
        .iter()
        .filter_map(|(label, t)| {
            let got = reason(t);
            (got != want).then(|| format!("{label}: {}", got.as_str()))
        })
        .collect();
    assert!(misses.is_empty(), "{class}: expected {} for every variant, got:\n{}", want.as_str(), misses.join("\n"));
}

fn segments(token: &str) -> [String; 3] {
    let p: Vec<&str> = token.split('.').collect();
    [p[0].to_owned(), p[1].to_owned(), p[2].to_owned()]
}

fn join(s: &[String; 3]) -> String {
    s.join(".")
}

#[test]
fn the_unmodified_token_of_every_class_is_accepted() {
    assert_eq!(reason(&sign(&api(), &header(&api()), &claims())), ReasonCode::Ok);
    // Same claims written with insignificant JSON whitespace: one byte string, one meaning.
    let spaced = sign_raw(&api(), b" {\"alg\" : \"ES256\",\n\"kid\":\"pr-1-api-1\"} ", claims().to_string().as_bytes());
    assert_eq!(reason(&spaced), ReasonCode::Ok);
}

// === Duplicate members (one name, any spelling) ===

/// Spellings of a member name that JSON decodes to the same string.
fn spellings(name: &str) -> Vec<String> {
    let esc = |c: char, upper: bool| {
        if upper { format!("\\u{:04X}", c as u32) } else { format!("\\u{:04x}", c as u32) }
    };
    let n = name.chars().count();
    let first: String = name.chars().enumerate().map(|(i, c)| if i == 0 { esc(c, false) } else { c.to_string() }).collect();
    let last: String = name.chars().enumerate().map(|(i, c)| if i == n - 1 { esc(c, true) } else { c.to_string() }).collect();
    let all: String = name.chars().map(|c| esc(c, false)).collect();
    let all_upper: String = name.chars().map(|c| esc(c, true)).collect();
    vec![name.to_owned(), first, last, all, all_upper]
}

/// `{..., "<spelling>": <value>}` appended to a JSON object's text.
fn append_member(obj: &Value, raw_name: &str, value: &Value) -> Vec<u8> {
    let text = obj.to_string();
    format!("{},\"{raw_name}\":{value}}}", &text[..text.len() - 1]).into_bytes()
}

#[test]
fn a_duplicate_member_is_malformed_in_every_spelling_and_position() {
    let k = api();
    let mut variants = Vec::new();
    for name in ["alg", "kid", "typ", "crit"] {
        let dup_value = if name == "crit" { json!(["x"]) } else { header(&k)[name].clone() };
        let base = if name == "crit" { with(header(&k), "crit", json!(["x"])) } else { header(&k) };
        for sp in spellings(name) {
            let h = append_member(&base, &sp, &dup_value);
            variants.push((format!("header {name} as {sp}"), sign_raw(&k, &h, claims().to_string().as_bytes())));
        }
    }
    for name in ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "preview"] {
        let base = with(claims(), "preview", json!("pr-1"));
        for sp in spellings(name) {
            for dup in [base[name].clone(), json!("other"), json!(0)] {
                let c = append_member(&base, &sp, &dup);
                variants.push((format!("claims {name} as {sp} = {dup}"), sign_raw(&k, header(&k).to_string().as_bytes(), &c)));
            }
        }
    }
    // Nested duplicates, in objects inside objects and arrays.
    for nested in [r#"{"a":1,"a":2}"#, r#"{"a":1,"\u0061":2}"#, r#"[{"b":1,"b":1}]"#, r#"{"x":{"y":{"z":1,"z":1}}}"#] {
        let c = format!("{},\"ext\":{nested}}}", &claims().to_string()[..claims().to_string().len() - 1]);
        variants.push((format!("nested {nested}"), sign_raw(&k, header(&k).to_string().as_bytes(), c.as_bytes())));
        let h = format!("{},\"ext\":{nested}}}", &header(&k).to_string()[..header(&k).to_string().len() - 1]);
        variants.push((format!("nested in header {nested}"), sign_raw(&k, h.as_bytes(), claims().to_string().as_bytes())));
    }
    expect_all("duplicate member", ReasonCode::Malformed, &variants);
}

#[test]
fn names_that_only_look_like_a_member_are_other_members() {
    // Not duplicates: JSON names are compared after unescaping, code point by code point. The
    // real `alg` and `aud` decide; the look-alikes are ignored like any unknown member.
    let k = api();
    for lookalike in ["ALG", "alg ", "alg\\u0000", "\\uff41lg", "\\u0430lg"] {
        let h = append_member(&header(&k), lookalike, &json!("none"));
        assert_eq!(reason(&sign_raw(&k, &h, claims().to_string().as_bytes())), ReasonCode::Ok, "{lookalike}");
    }
    let c = append_member(&claims(), "\\u0430ud", &json!("preview-pr-9-orders"));
    assert_eq!(reason(&sign_raw(&k, header(&k).to_string().as_bytes(), &c)), ReasonCode::Ok);
}

// === Non-canonical base64url ===

/// Claims whose encoded length has each remainder mod 4 (0, 2, 3), so that every trailing-bit
/// and padding form exists for some segment.
fn claims_of_every_length() -> Vec<Value> {
    (0..3).map(|i| with(claims(), "jti", json!(format!("class-{}", "x".repeat(i))))).collect()
}

/// The same bytes under a lenient decoder: non-zero unused bits in the last character.
fn with_trailing_bits(seg: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let unused = match seg.len() % 4 {
        2 => 4,
        3 => 2,
        _ => return None,
    };
    let last = seg.as_bytes()[seg.len() - 1];
    let v = ALPHABET.iter().position(|c| *c == last)?;
    let flipped = ALPHABET[v | ((1 << unused) - 1)] as char;
    (flipped as u8 != last).then(|| format!("{}{flipped}", &seg[..seg.len() - 1]))
}

#[test]
fn every_non_canonical_base64url_form_of_every_segment_is_malformed() {
    let k = api();
    let mut variants = Vec::new();
    for c in claims_of_every_length() {
        let token = sign(&k, &header(&k), &c);
        assert_eq!(reason(&token), ReasonCode::Ok);
        let segs = segments(&token);
        for i in 0..3 {
            let name = ["header", "claims", "signature"][i];
            let mut add = |label: &str, seg: String| {
                let mut s = segs.clone();
                s[i] = seg;
                variants.push((format!("{name} len%4={} {label}", segs[i].len() % 4), join(&s)));
            };
            let seg = &segs[i];
            let pad = "=".repeat((4 - seg.len() % 4) % 4);
            if !pad.is_empty() {
                add("padded", format!("{seg}{pad}"));
            }
            add("padded (extra =)", format!("{seg}{pad}="));
            add("padded (%3D)", format!("{seg}{}", "%3D".repeat(pad.len().max(1))));
            add("standard alphabet", seg.replace('-', "+").replace('_', "/") + if seg.contains(['-', '_']) { "" } else { "+" });
            for ws in [" ", "\t", "\n", "\r\n", "\u{a0}"] {
                add(&format!("whitespace {ws:?} inside"), format!("{}{ws}{}", &seg[..seg.len() / 2], &seg[seg.len() / 2..]));
                add(&format!("whitespace {ws:?} after"), format!("{seg}{ws}"));
                add(&format!("whitespace {ws:?} before"), format!("{ws}{seg}"));
            }
            if let Some(t) = with_trailing_bits(seg) {
                add("non-zero trailing bits", t);
            }
            add("impossible length (4n+1)", if seg.len() % 4 == 0 { format!("{seg}A") } else { format!("{seg}AAAA{}", "A".repeat(5 - seg.len() % 4)) });
            add("fullwidth letter", format!("{}\u{ff21}", &seg[..seg.len() - 1]));
            add("cyrillic look-alike", format!("{}\u{0410}", &seg[..seg.len() - 1]));
            add("percent-encoded", format!("%{:02X}{}", seg.as_bytes()[0], &seg[1..]));
            add("NUL byte", format!("{seg}\0"));
        }
        variants.push(("empty header".into(), format!(".{}.{}", segs[1], segs[2])));
        variants.push(("empty claims".into(), format!("{}..{}", segs[0], segs[2])));
        variants.push(("two segments".into(), format!("{}.{}", segs[0], segs[1])));
        variants.push(("four segments".into(), format!("{}.{}.{}.{}", segs[0], segs[1], segs[2], segs[2])));
        variants.push(("JWE-like five segments".into(), format!("{}.{}.{}..{}", segs[0], segs[1], segs[2], segs[2])));
        variants.push(("leading dot".into(), format!(".{token}")));
        variants.push(("trailing dot".into(), format!("{token}.")));
        variants.push(("single segment".into(), segs[1].clone()));
    }
    expect_all("non-canonical base64url", ReasonCode::Malformed, &variants);
}

#[test]
fn an_empty_signature_segment_is_a_bad_signature_not_a_parse_error() {
    let token = sign(&api(), &header(&api()), &claims());
    let segs = segments(&token);
    assert_eq!(reason(&format!("{}.{}.", segs[0], segs[1])), ReasonCode::BadSignature);
}

// === JSON that is not one plain object ===

#[test]
fn json_that_is_not_exactly_one_object_is_malformed_in_either_segment() {
    let k = api();
    let h = header(&k).to_string();
    let c = claims().to_string();
    let bad: Vec<(String, Vec<u8>)> = vec![
        ("BOM".into(), [&b"\xef\xbb\xbf"[..], c.as_bytes()].concat()),
        ("trailing garbage".into(), format!("{c}x").into_bytes()),
        ("two objects".into(), format!("{c}{c}").into_bytes()),
        ("array".into(), format!("[{c}]").into_bytes()),
        ("string".into(), b"\"x\"".to_vec()),
        ("null".into(), b"null".to_vec()),
        ("trailing comma".into(), format!("{},}}", &c[..c.len() - 1]).into_bytes()),
        ("comment".into(), format!("/*x*/{c}").into_bytes()),
        ("single quotes".into(), c.replace('"', "'").into_bytes()),
        ("NaN".into(), format!("{},\"x\":NaN}}", &c[..c.len() - 1]).into_bytes()),
        ("Infinity".into(), format!("{},\"x\":Infinity}}", &c[..c.len() - 1]).into_bytes()),
        ("1e400".into(), format!("{},\"x\":1e400}}", &c[..c.len() - 1]).into_bytes()),
        ("lone surrogate".into(), format!("{},\"x\":\"\\ud800\"}}", &c[..c.len() - 1]).into_bytes()),
        ("invalid UTF-8".into(), [&c.as_bytes()[..c.len() - 1], b",\"x\":\"\xff\xfe\"}"].concat()),
        ("raw control byte in a string".into(), [&c.as_bytes()[..c.len() - 1], b",\"x\":\"a\x01b\"}"].concat()),
        ("empty".into(), Vec::new()),
    ];
    let mut variants = Vec::new();
    for (label, bytes) in &bad {
        variants.push((format!("claims: {label}"), sign_raw(&k, h.as_bytes(), bytes)));
        variants.push((format!("header: {label}"), sign_raw(&k, bytes, c.as_bytes())));
    }
    expect_all("not one JSON object", ReasonCode::Malformed, &variants);
}

// === Nesting and size (C19) ===

#[test]
fn nesting_is_refused_beyond_32_levels_in_arrays_and_objects_of_either_segment() {
    let k = api();
    let nest = |depth: usize, array: bool| -> String {
        // `depth` counts the enclosing header/claims object as level 1.
        let inner = depth - 1;
        if array {
            format!("{}1{}", "[".repeat(inner), "]".repeat(inner))
        } else {
            format!("{}1{}", "{\"a\":".repeat(inner), "}".repeat(inner))
        }
    };
    let put = |obj: &Value, extra: &str| {
        let t = obj.to_string();
        format!("{},\"ext\":{extra}}}", &t[..t.len() - 1]).into_bytes()
    };
    for array in [true, false] {
        let ok_c = put(&claims(), &nest(32, array));
        assert_eq!(reason(&sign_raw(&k, header(&k).to_string().as_bytes(), &ok_c)), ReasonCode::Ok, "32 levels");
        let mut variants = Vec::new();
        for depth in [33, 34, 100, 600] {
            let c = put(&claims(), &nest(depth, array));
            variants.push((format!("claims depth {depth}"), sign_raw(&k, header(&k).to_string().as_bytes(), &c)));
            let h = put(&header(&k), &nest(depth, array));
            variants.push((format!("header depth {depth}"), sign_raw(&k, &h, claims().to_string().as_bytes())));
        }
        expect_all(if array { "deep arrays" } else { "deep objects" }, ReasonCode::Malformed, &variants);
    }
}

#[test]
fn the_size_limit_is_exactly_8192_bytes_and_checked_before_decoding() {
    let k = api();
    let base = sign(&k, &header(&k), &with(claims(), "jti", json!("")));
    // Each 3 bytes of jti add 4 characters: find the filler that lands on exactly 8192.
    let mut filler = (8192 - base.len()) / 4 * 3;
    let token = loop {
        let t = sign(&k, &header(&k), &with(claims(), "jti", json!("j".repeat(filler))));
        if t.len() >= 8192 {
            break t;
        }
        filler += 1;
    };
    assert!(token.len() == 8192 || token.len() == 8193, "{}", token.len());
    let expected = if token.len() == 8192 { ReasonCode::Ok } else { ReasonCode::TokenTooLarge };
    assert_eq!(reason(&token), expected);
    let bigger = sign(&k, &header(&k), &with(claims(), "jti", json!("j".repeat(filler + 3))));
    assert_eq!(reason(&bigger), ReasonCode::TokenTooLarge);
    // Garbage of any shape over the limit is refused by size, not parsed.
    for junk in ["\0".repeat(8193), "{".repeat(100_000), ".".repeat(9000), "é".repeat(5000)] {
        assert_eq!(reason(&junk), ReasonCode::TokenTooLarge);
    }
}

// === alg (C01, C02) ===

#[test]
fn every_algorithm_other_than_the_keys_own_is_not_allowed() {
    let k = api();
    let mut variants = Vec::new();
    for alg in [
        "none", "None", "NONE", "nOnE", "HS256", "HS384", "HS512", "RS256", "RS512", "PS256", "ES384", "ES512", "ES256K",
        "es256", "Es256", "ES256 ", " ES256", "ES256\u{0}", "ES-256", "Ed25519", "EDDSA", "", "dir", "A128KW",
    ] {
        let h = with(header(&k), "alg", json!(alg));
        variants.push((format!("alg {alg:?}"), sign(&k, &h, &claims())));
        let segs = segments(&sign(&k, &h, &claims()));
        variants.push((format!("alg {alg:?}, empty signature"), format!("{}.{}.", segs[0], segs[1])));
    }
    // EdDSA is allowed in pr-1 (web's key), but never with api's ES256 key: the key decides.
    variants.push(("EdDSA header on an ES256 key".into(), sign(&k, &with(header(&k), "alg", json!("EdDSA")), &claims())));
    variants.push(("ES256 header on web's EdDSA key".into(), {
        let w = key("pr-1-web-1");
        sign(&w, &with(header(&w), "alg", json!("ES256")), &with(claims(), "iss", json!("preview-pr-1-web")))
    }));
    variants.push(("no alg".into(), sign(&k, &without(header(&k), "alg"), &claims())));
    expect_all("alg", ReasonCode::AlgNotAllowed, &variants);

    let typed: Vec<(String, String)> = [json!(null), json!(1), json!(["ES256"]), json!({"alg": "ES256"}), json!(true)]
        .into_iter()
        .map(|a| (format!("alg {a}"), sign(&k, &with(header(&k), "alg", a), &claims())))
        .collect();
    expect_all("alg of the wrong type", ReasonCode::Malformed, &typed);
}

// === crit (C13) ===

#[test]
fn any_crit_header_is_malformed_whatever_it_lists() {
    let k = api();
    let variants: Vec<(String, String)> =
        [json!([]), json!(["b64"]), json!(["exp"]), json!([""]), json!("b64"), json!(null), json!({}), json!(["preview-binding"])]
            .into_iter()
            .map(|c| (format!("crit {c}"), sign(&k, &with(header(&k), "crit", c), &claims())))
            .collect();
    expect_all("crit", ReasonCode::Malformed, &variants);
    // `crit` is a header parameter; in the claims it is just an unknown claim.
    assert_eq!(reason(&sign(&k, &header(&k), &with(claims(), "crit", json!(["x"])))), ReasonCode::Ok);
}

// === Signatures (C03, C04, C15, C16) ===

fn replace_sig(token: &str, sig: &[u8]) -> String {
    let segs = segments(token);
    format!("{}.{}.{}", segs[0], segs[1], b64(sig))
}

fn sig_bytes(token: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(&segments(token)[2]).unwrap()
}

/// `a - b` for 32-byte big-endian numbers with a >= b.
fn sub_be(a: &[u8; 32], b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = a[i] as i16 - b[i] as i16 - borrow;
        borrow = if d < 0 { 1 } else { 0 };
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

/// `a + b` for 32-byte little-endian numbers (no overflow for the values used here).
fn add_le(a: &[u8], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let s = a[i] as u16 + b[i] as u16 + carry;
        out[i] = s as u8;
        carry = s >> 8;
    }
    out
}

fn der(r: &[u8], s: &[u8]) -> Vec<u8> {
    let int = |x: &[u8]| {
        let x: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
        let x = if x.first().is_some_and(|b| b & 0x80 != 0) { [&[0u8][..], &x].concat() } else { x };
        [&[0x02, x.len() as u8][..], &x].concat()
    };
    let body = [int(r), int(s)].concat();
    [&[0x30, body.len() as u8][..], &body].concat()
}

#[test]
fn es256_signatures_of_any_other_length_or_out_of_range_are_bad() {
    let k = api();
    let token = sign(&k, &header(&k), &claims());
    let sig = sig_bytes(&token);
    let (r, s) = sig.split_at(32);
    let zero = [0u8; 32];
    let ones = [0xffu8; 32];
    let mut variants: Vec<(String, String)> = Vec::new();
    for len in [0, 1, 31, 32, 63, 65, 66, 96, 128, 512] {
        let v: Vec<u8> = sig.iter().copied().cycle().take(len).collect();
        variants.push((format!("length {len}"), replace_sig(&token, &v)));
    }
    variants.push(("DER of the same (r, s)".into(), replace_sig(&token, &der(r, s))));
    variants.push(("r‖s with a leading zero".into(), replace_sig(&token, &[&[0u8][..], &sig].concat())));
    for (label, rr, ss) in [
        ("r = 0", &zero[..], s),
        ("s = 0", r, &zero[..]),
        ("r = s = 0", &zero[..], &zero[..]),
        ("r = n", &P256_N[..], s),
        ("s = n", r, &P256_N[..]),
        ("r = s = n", &P256_N[..], &P256_N[..]),
        ("r = 2^256 - 1", &ones[..], s),
        ("s = 2^256 - 1", r, &ones[..]),
        ("r + n overflow-truncated", &sub_be(&ones, &sub_be(&P256_N, r))[..], s),
    ] {
        variants.push((label.to_owned(), replace_sig(&token, &[rr, ss].concat())));
    }
    let mut flipped = sig.clone();
    flipped[63] ^= 1;
    variants.push(("one bit flipped".into(), replace_sig(&token, &flipped)));
    expect_all("ES256 signature", ReasonCode::BadSignature, &variants);
}

#[test]
fn high_s_twins_are_accepted_with_the_same_jti_every_time() {
    // C15: (r, n - s) verifies like (r, s); dedup must key on jti, never on the token text.
    let k = api();
    for i in 0..16 {
        let token = sign(&k, &header(&k), &with(claims(), "jti", json!(format!("twin-{i}"))));
        let sig = sig_bytes(&token);
        let twin = replace_sig(&token, &[&sig[..32], &sub_be(&P256_N, &sig[32..])[..]].concat());
        assert_ne!(twin, token);
        let v = verifier("jwks/pr-1.json");
        let (a, b) = (v.verify(&token, NOW).unwrap(), v.verify(&twin, NOW).unwrap());
        assert_eq!(a.jti, b.jti);
    }
}

#[test]
fn ed25519_signatures_with_s_out_of_range_or_of_another_length_are_bad() {
    let w = key("pr-1-web-1");
    let c = with(claims(), "iss", json!("preview-pr-1-web"));
    let token = sign(&w, &header(&w), &c);
    let v = verifier("jwks/pr-1.json");
    assert_eq!(v.verify(&token, NOW).unwrap().caller.as_str(), "web");
    let sig = sig_bytes(&token);
    let (rr, s) = sig.split_at(32);
    let mut variants: Vec<(String, String)> = vec![
        ("S + L".into(), replace_sig(&token, &[rr, &add_le(s, &ED25519_L)[..]].concat())),
        ("S = L".into(), replace_sig(&token, &[rr, &ED25519_L[..]].concat())),
        ("S = 2^255 - 1".into(), replace_sig(&token, &[rr, &[0xff; 31][..], &[0x7f][..]].concat())),
        ("all zero".into(), replace_sig(&token, &[0u8; 64])),
        ("R all zero".into(), replace_sig(&token, &[&[0u8; 32][..], s].concat())),
        ("63 bytes".into(), replace_sig(&token, &sig[..63])),
        ("65 bytes".into(), replace_sig(&token, &[&sig[..], &[0u8][..]].concat())),
        ("128 bytes".into(), replace_sig(&token, &[&sig[..], &sig[..]].concat())),
    ];
    let mut flipped = sig.clone();
    flipped[0] ^= 1;
    variants.push(("one bit flipped".into(), replace_sig(&token, &flipped)));
    let misses: Vec<String> = variants
        .iter()
        .filter_map(|(l, t)| {
            let got = v.verify(t, NOW).err().map(|r| r.reason);
            (got != Some(ReasonCode::BadSignature)).then(|| format!("{l}: {got:?}"))
        })
        .collect();
    assert!(misses.is_empty(), "{misses:?}");
}

// === kid (C18) ===

#[test]
fn any_kid_that_is_not_exactly_a_registered_one_is_unknown() {
    let k = api();
    let mut variants = Vec::new();
    for kid in [
        "../../../../../../dev/null",
        "pr-1-api-1\n{\"decision\":\"accept\"}",
        "",
        "pr-1-api-1 ",
        " pr-1-api-1",
        "PR-1-API-1",
        "pr-1-api-1\u{0}",
        "\u{0440}r-1-api-1",
        "pr-1-api-1/../pr-1-api-1",
        "pr-1-api-%31",
        "*",
        "pr-1-api-1' OR '1'='1",
        &"k".repeat(4000),
    ] {
        variants.push((format!("kid {:?}", &kid[..kid.len().min(40)]), sign(&k, &with(header(&k), "kid", json!(kid)), &claims())));
    }
    variants.push(("no kid".into(), sign(&k, &without(header(&k), "kid"), &claims())));
    expect_all("kid", ReasonCode::UnknownKid, &variants);

    let typed: Vec<(String, String)> = [json!(null), json!(1), json!(["pr-1-api-1"]), json!({"kid": "pr-1-api-1"})]
        .into_iter()
        .map(|kid| (format!("kid {kid}"), sign(&k, &with(header(&k), "kid", kid), &claims())))
        .collect();
    expect_all("kid of the wrong type", ReasonCode::Malformed, &typed);
    // Another service's kid on api's signature: the named key does not verify it.
    assert_eq!(reason(&sign(&k, &with(header(&k), "kid", json!("pr-1-worker-1")), &claims())), ReasonCode::BadSignature);
}

// === aud (C07) ===

#[test]
fn every_audience_spelling_but_an_exact_accepted_one_is_refused() {
    let k = api();
    for ok in [json!("preview-pr-1-orders"), json!("preview-pr-1"), json!(["x", "preview-pr-1"]), json!(["preview-pr-1-orders"])] {
        assert_eq!(reason(&sign(&k, &header(&k), &with(claims(), "aud", ok.clone()))), ReasonCode::Ok, "{ok}");
    }
    let mismatch: Vec<(String, String)> = [
        json!("PREVIEW-PR-1-ORDERS"),
        json!("preview-pr-1-orders "),
        json!(" preview-pr-1-orders"),
        json!("preview-pr-1-orders\u{0}"),
        json!("preview-pr-1-order"),
        json!("preview-pr-1-ordersx"),
        json!("preview-pr-2-orders"),
        json!("preview-pr-1-api"),
        json!("preview-pr-10"),
        json!("*"),
        json!(""),
        json!([]),
        json!([""]),
        json!(["preview-pr-2", "preview-pr-1-billing"]),
    ]
    .into_iter()
    .map(|a| (format!("aud {a}"), sign(&k, &header(&k), &with(claims(), "aud", a))))
    .chain([("no aud".to_owned(), sign(&k, &header(&k), &without(claims(), "aud")))])
    .collect();
    expect_all("audience", ReasonCode::AudienceMismatch, &mismatch);
    let typed: Vec<(String, String)> = [json!(null), json!(1), json!({}), json!([1]), json!([null]), json!(["preview-pr-1-orders", 1])]
        .into_iter()
        .map(|a| (format!("aud {a}"), sign(&k, &header(&k), &with(claims(), "aud", a))))
        .collect();
    expect_all("audience of the wrong type", ReasonCode::Malformed, &typed);
}

// === Times (C08, C09, C10) ===

#[test]
fn numeric_dates_of_any_wrong_type_or_out_of_range_are_malformed() {
    let k = api();
    let mut variants = Vec::new();
    let raw_numbers = ["253402300800", "1e19", "1e300", "-1", "-0.5", "18446744073709551616", "1e400", "-1e400"];
    for name in ["exp", "nbf", "iat"] {
        for bad in [json!("1796299490"), json!(true), json!(null), json!([NOW]), json!({"t": NOW}), json!("")] {
            variants.push((format!("{name} = {bad}"), sign(&k, &header(&k), &with(claims(), name, bad))));
        }
        for raw in raw_numbers {
            // Written as raw JSON text, so values serde would not produce survive.
            let c = without(claims(), name).to_string();
            let c = format!("{},\"{name}\":{raw}}}", &c[..c.len() - 1]);
            variants.push((format!("{name} = {raw}"), sign_raw(&k, header(&k).to_string().as_bytes(), c.as_bytes())));
        }
    }
    variants.push(("no exp".into(), sign(&k, &header(&k), &without(claims(), "exp"))));
    expect_all("numeric date", ReasonCode::Malformed, &variants);
}

#[test]
fn time_checks_hold_at_the_exact_leeway_boundaries() {
    let k = api();
    let t = |c: Value| reason(&sign(&k, &header(&k), &c));
    assert_eq!(t(with(claims(), "exp", json!(NOW - 60.0))), ReasonCode::Expired);
    assert_eq!(t(with(claims(), "exp", json!(NOW - 59.5))), ReasonCode::Ok);
    assert_eq!(t(with(claims(), "exp", json!(0))), ReasonCode::Expired);
    assert_eq!(t(with(claims(), "exp", json!(253_402_300_799u64))), ReasonCode::Ok, "the largest date is a date");
    assert_eq!(t(with(claims(), "nbf", json!(NOW + 60.0))), ReasonCode::Ok);
    assert_eq!(t(with(claims(), "nbf", json!(NOW + 60.5))), ReasonCode::NotYetValid);
    assert_eq!(t(with(claims(), "iat", json!(NOW + 60.0))), ReasonCode::Ok);
    assert_eq!(t(with(claims(), "iat", json!(NOW + 61.0))), ReasonCode::IssuedInFuture);
    assert_eq!(t(with(claims(), "exp", json!(NOW + 290.25))), ReasonCode::Ok, "fractions are allowed");
    // The same instant in exponent notation is the same number.
    let c = without(claims(), "exp").to_string();
    let c = format!("{},\"exp\":1.7962994e9}}", &c[..c.len() - 1]);
    assert_eq!(reason(&sign_raw(&k, header(&k).to_string().as_bytes(), c.as_bytes())), ReasonCode::Ok);
}

// === Issuer and preview (C22) ===

#[test]
fn a_token_of_another_preview_or_issuer_is_refused_whatever_it_claims() {
    let shared = verifier("jwks/shared-pr-1-pr-2.json");
    let other = key("pr-2-api-1");
    let k = api();
    let r = |v: &Verifier, t: String| v.verify(&t, NOW).err().map(|e| e.reason);
    for (iss, aud, want) in [
        ("preview-pr-2-api", "preview-pr-1", ReasonCode::PreviewMismatch),
        ("preview-pr-2-api", "preview-pr-1-orders", ReasonCode::PreviewMismatch),
        ("preview-pr-1-api", "preview-pr-1-orders", ReasonCode::IssuerKeyMismatch),
        ("preview-pr-1-orders", "preview-pr-1", ReasonCode::IssuerKeyMismatch),
    ] {
        let c = with(with(claims(), "iss", json!(iss)), "aud", json!(aud));
        assert_eq!(r(&shared, sign(&other, &header(&other), &c)), Some(want), "{iss} signed by pr-2's key");
    }
    let own = verifier("jwks/pr-1.json");
    let mut variants: Vec<(String, ReasonCode, String)> = Vec::new();
    for (iss, want) in [
        ("preview-pr-2-api", ReasonCode::PreviewMismatch),
        ("preview-pr-10-api", ReasonCode::PreviewMismatch),
        ("preview-pr-1-API", ReasonCode::IssuerUnknown),
        ("preview-pr-1-api ", ReasonCode::IssuerUnknown),
        ("preview-pr-1-ghost", ReasonCode::IssuerUnknown),
        ("api", ReasonCode::IssuerUnknown),
        ("", ReasonCode::IssuerUnknown),
        ("preview-pr-1-web", ReasonCode::IssuerKeyMismatch),
        ("preview-pr-1-worker", ReasonCode::IssuerKeyMismatch),
    ] {
        variants.push((format!("iss {iss:?}"), want, sign(&k, &header(&k), &with(claims(), "iss", json!(iss)))));
    }
    for p in ["pr-2", "PR-1", "pr-1 ", ""] {
        variants.push((format!("preview {p:?}"), ReasonCode::PreviewMismatch, sign(&k, &header(&k), &with(claims(), "preview", json!(p)))));
    }
    variants.push(("no iss".into(), ReasonCode::IssuerUnknown, sign(&k, &header(&k), &without(claims(), "iss"))));
    variants.push(("iss 1".into(), ReasonCode::Malformed, sign(&k, &header(&k), &with(claims(), "iss", json!(1)))));
    for name in ["sub", "jti", "preview"] {
        variants.push((format!("{name} 1"), ReasonCode::Malformed, sign(&k, &header(&k), &with(claims(), name, json!(1)))));
    }
    let misses: Vec<String> = variants
        .iter()
        .filter_map(|(l, want, t)| {
            let got = reason_with(&own, t);
            (got != *want).then(|| format!("{l}: want {}, got {}", want.as_str(), got.as_str()))
        })
        .collect();
    assert!(misses.is_empty(), "{}", misses.join("\n"));
}

// === Authorization header values (C20) ===

#[test]
fn every_authorization_value_but_one_bearer_credential_is_refused_with_its_reason() {
    let t = sign(&api(), &header(&api()), &claims());
    let ok = [
        format!("Bearer {t}"),
        format!("bearer {t}"),
        format!("BEARER {t}"),
        format!("BeArEr {t}"),
        format!("Bearer  {t}"),
        format!("Bearer {t} "),
        format!(" Bearer {t}"),
    ];
    for v in &ok {
        assert_eq!(extract_bearer(&[v.as_bytes()]).map(str::to_owned), Ok(t.clone()), "{v:?}");
    }
    let cases: Vec<(String, ReasonCode)> = vec![
        (t.clone(), ReasonCode::Malformed),
        (format!("Bearer\t{t}"), ReasonCode::Malformed),
        (format!("Basic {t}"), ReasonCode::Malformed),
        (format!("Token {t}"), ReasonCode::Malformed),
        (format!("Bearer={t}"), ReasonCode::Malformed),
        (format!("Bearer: {t}"), ReasonCode::Malformed),
        ("Bearer".into(), ReasonCode::Malformed),
        ("Bearer ".into(), ReasonCode::Malformed),
        (String::new(), ReasonCode::Malformed),
        (format!("Bearer {t} {t}"), ReasonCode::Malformed),
        (format!("Bearer {t}\t{t}"), ReasonCode::Malformed),
        (format!("Bearer {t},{t}"), ReasonCode::MultipleTokens),
        (format!("Bearer {t}, Bearer {t}"), ReasonCode::MultipleTokens),
        (format!("Bearer {t},"), ReasonCode::MultipleTokens),
    ];
    for (v, want) in &cases {
        assert_eq!(extract_bearer(&[v.as_bytes()]).err().map(|r| r.reason), Some(*want), "{v:?}");
    }
    let bytes = [&b"Bearer "[..], t.as_bytes(), b"\xff"].concat();
    assert_eq!(extract_bearer(&[&bytes]).err().map(|r| r.reason), Some(ReasonCode::Malformed));
    let v = format!("Bearer {t}");
    assert_eq!(extract_bearer(&[v.as_bytes(), v.as_bytes()]).err().map(|r| r.reason), Some(ReasonCode::MultipleTokens));
    assert_eq!(extract_bearer(&[]).err().map(|r| r.reason), Some(ReasonCode::MissingToken));
}
