//! The reference vectors, as literals: the minute-salted auth hash (18
//! cases), `Sec-WebSocket-Accept` (11 keys), first through the library, then
//! through the real server; and the command line's `check`, `hash-password`,
//! `--version` and exit codes.
//!
//! Source: the project's shared `vectors/auth.json` and `vectors/accept.json`
//! (captured from vproxy at commit bf92f678). Nothing here reads them at run
//! time: the values below are copies.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use websocks::proto::{auth, http, ws};

/// One case of `auth.json`.
struct Case {
    user: &'static str,
    /// The configured password as text ...
    password: &'static str,
    /// ... and its UTF-8 bytes, so the input is unambiguous.
    password_hex: &'static str,
    minute_ms: u64,
    /// `base64(sha256(password))`.
    inner: &'static str,
    /// `base64(sha256(inner + decimal(minute_ms)))`.
    field: &'static str,
    /// `Basic base64(user:field)`.
    header: &'static str,
}

/// The 200-character password of the `mallory` case.
const MALLORY: &str = concat!(
    "Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!",
    "Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!",
    "Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!",
    "Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!",
    "Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!",
);
const MALLORY_HEX: &str = concat!(
    "41613021416130214161302141613021416130214161302141613021416130214161302141613021",
    "41613021416130214161302141613021416130214161302141613021416130214161302141613021",
    "41613021416130214161302141613021416130214161302141613021416130214161302141613021",
    "41613021416130214161302141613021416130214161302141613021416130214161302141613021",
    "41613021416130214161302141613021416130214161302141613021416130214161302141613021",
);

/// All 18 cases of `auth.json`, in its order. The last one is the seed's
/// example header: its salt is the legacy minute-of-hour `56`, not a
/// millisecond timestamp, so it is there for header parsing.
const AUTH: [Case; 18] = [
    Case {
        user: "alice",
        password: "pasSw0rD",
        password_hex: "7061735377307244",
        minute_ms: 1569643260000,
        inner: "AUiBnFUd+h5Wy2jsmdfmwRdKqTMBVNPuxZcRy3PYkxk=",
        field: "kdIeonbE6ghFPyVAb+3etmOHIhCaByiP2Tibq7tnjP4=",
        header: "Basic YWxpY2U6a2RJZW9uYkU2Z2hGUHlWQWIrM2V0bU9ISWhDYUJ5aVAyVGlicTd0bmpQND0=",
    },
    Case {
        user: "alice",
        password: "pasSw0rD",
        password_hex: "7061735377307244",
        minute_ms: 1569643320000,
        inner: "AUiBnFUd+h5Wy2jsmdfmwRdKqTMBVNPuxZcRy3PYkxk=",
        field: "DfNuxg+WogKkXa5wMsefa5G4yEWADWBFXtbDcVCiQdY=",
        header: "Basic YWxpY2U6RGZOdXhnK1dvZ0trWGE1d01zZWZhNUc0eUVXQURXQkZYdGJEY1ZDaVFkWT0=",
    },
    Case {
        user: "alice",
        password: "pasSw0rD",
        password_hex: "7061735377307244",
        minute_ms: 1569643200000,
        inner: "AUiBnFUd+h5Wy2jsmdfmwRdKqTMBVNPuxZcRy3PYkxk=",
        field: "pUmRSzuVs2m9D5d8zN5sKdLwDVsxiWyemS7ptHQQ2uc=",
        header: "Basic YWxpY2U6cFVtUlN6dVZzMm05RDVkOHpONXNLZEx3RFZzeGlXeWVtUzdwdEhRUTJ1Yz0=",
    },
    Case {
        user: "bob",
        password: "PaSsw0Rd",
        password_hex: "5061537377305264",
        minute_ms: 1700000040000,
        inner: "rI26TllhKsuxS4yuqyzwaJbSyR1/yV/edDshbJc6x9Y=",
        field: "WujVy9WZICoFKwNnUAZBmyThv77xr1B9UTId+HI/L+E=",
        header: "Basic Ym9iOld1alZ5OVdaSUNvRkt3Tm5VQVpCbXlUaHY3N3hyMUI5VVRJZCtISS9MK0U9",
    },
    Case {
        user: "alice",
        password: "pasSw0rD",
        password_hex: "7061735377307244",
        minute_ms: 0,
        inner: "AUiBnFUd+h5Wy2jsmdfmwRdKqTMBVNPuxZcRy3PYkxk=",
        field: "YdfVOUiRW4nJsNw0fAAjE8dRm5GO42PTWtZobEFIieA=",
        header: "Basic YWxpY2U6WWRmVk9VaVJXNG5Kc053MGZBQWpFOGRSbTVHTzQyUFRXdFpvYkVGSWllQT0=",
    },
    Case {
        user: "alice",
        password: "pasSw0rD",
        password_hex: "7061735377307244",
        minute_ms: 60000,
        inner: "AUiBnFUd+h5Wy2jsmdfmwRdKqTMBVNPuxZcRy3PYkxk=",
        field: "Tn34yhyou09xp9R+mGfEcZkce3CbFcdZvdteRIPYU+Q=",
        header: "Basic YWxpY2U6VG4zNHloeW91MDl4cDlSK21HZkVjWmtjZTNDYkZjZFp2ZHRlUklQWVUrUT0=",
    },
    Case {
        user: "alice",
        password: "pasSw0rD",
        password_hex: "7061735377307244",
        minute_ms: 253402300740000,
        inner: "AUiBnFUd+h5Wy2jsmdfmwRdKqTMBVNPuxZcRy3PYkxk=",
        field: "kMa1wABLnYSMZQN5C5UsviP+vzsUJc747VSxdAoPHP8=",
        header: "Basic YWxpY2U6a01hMXdBQkxuWVNNWlFONUM1VXN2aVArdnpzVUpjNzQ3VlN4ZEFvUEhQOD0=",
    },
    Case {
        user: "carol",
        password: "pässwörd",
        password_hex: "70c3a4737377c3b67264",
        minute_ms: 1569643260000,
        inner: "RpcL73Cs7YEj8NXQlHF+KlzUEgQeA7JjdgSf5lsoNKQ=",
        field: "9KTKrScvLzdFkSysWB8+aHzq/cm7onqYfhtqfKNfjjY=",
        header: "Basic Y2Fyb2w6OUtUS3JTY3ZMemRGa1N5c1dCOCthSHpxL2NtN29ucVlmaHRxZktOZmpqWT0=",
    },
    Case {
        user: "dave",
        password: "密码测试",
        password_hex: "e5af86e7a081e6b58be8af95",
        minute_ms: 1569643260000,
        inner: "+RgvdVaaE2jHSBmzFhP2QaqXEXiB8ylYXfpra4zOTZI=",
        field: "bELpadV27deZNNup2wFYtKNiKUhMxfXQtIdw18JzgKk=",
        header: "Basic ZGF2ZTpiRUxwYWRWMjdkZVpOTnVwMndGWXRLTmlLVWhNeGZYUXRJZHcxOEp6Z0trPQ==",
    },
    Case {
        user: "erin",
        password: "🔑key🗝",
        password_hex: "f09f94916b6579f09f979d",
        minute_ms: 1569643260000,
        inner: "xEU7DqHrvG/2nzfYFxKIyTh2TZ7l7Bb074tnrYEAfyc=",
        field: "7m1HOVYrCyPQ/aV20BdV/Pzl6TVum8DJRT7Oa++Cp9Y=",
        header: "Basic ZXJpbjo3bTFIT1ZZckN5UFEvYVYyMEJkVi9Qemw2VFZ1bThESlJUN09hKytDcDlZPQ==",
    },
    Case {
        user: "ālice",
        password: "pasSw0rD",
        password_hex: "7061735377307244",
        minute_ms: 1569643260000,
        inner: "AUiBnFUd+h5Wy2jsmdfmwRdKqTMBVNPuxZcRy3PYkxk=",
        field: "kdIeonbE6ghFPyVAb+3etmOHIhCaByiP2Tibq7tnjP4=",
        header: "Basic xIFsaWNlOmtkSWVvbmJFNmdoRlB5VkFiKzNldG1PSEloQ2FCeWlQMlRpYnE3dG5qUDQ9",
    },
    Case {
        user: "frank",
        password: "pa:ss:word",
        password_hex: "70613a73733a776f7264",
        minute_ms: 1569643260000,
        inner: "4V7EHB8f/B+qJc8upcrB5R6ZvQ0SWLdZxdQWm48E1q4=",
        field: "QRnubS7mKzZOKlTMXfOc0fqWI+yOJbeQfeIXtyQO7AU=",
        header: "Basic ZnJhbms6UVJudWJTN21LelpPS2xUTVhmT2MwZnFXSSt5T0piZVFmZUlYdHlRTzdBVT0=",
    },
    Case {
        user: "grace",
        password: "a,b",
        password_hex: "612c62",
        minute_ms: 1569643260000,
        inner: "HrfFTVKDG7/olCrwscVrdAlSOlntbKmcEXT+9+sywbU=",
        field: "FgqVM70m+P9hEon6PIOpkeC1rQylVAqDbhATrbV6TNE=",
        header: "Basic Z3JhY2U6RmdxVk03MG0rUDloRW9uNlBJT3BrZUMxclF5bFZBcURiaEFUcmJWNlRORT0=",
    },
    Case {
        user: "heidi",
        password: " spaced pw ",
        password_hex: "2073706163656420707720",
        minute_ms: 1569643260000,
        inner: "oNj+nVbwb6csz1pEFZv24AMxJ6IgP1xXTKtmcH3S2Ps=",
        field: "ODXeIfcRY1pHOYqDrHghdrNXmFwebbl8tQye9as2R6o=",
        header: "Basic aGVpZGk6T0RYZUlmY1JZMXBIT1lxRHJIZ2hkck5YbUZ3ZWJibDh0UXllOWFzMlI2bz0=",
    },
    Case {
        user: "ivan",
        password: "x",
        password_hex: "78",
        minute_ms: 1569643260000,
        inner: "LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE=",
        field: "Pi85LPsVDnWkoL/qjG0vtivZazn/pmrCS1AXYkXOQKE=",
        header: "Basic aXZhbjpQaTg1TFBzVkRuV2tvTC9xakcwdnRpdlphem4vcG1yQ1MxQVhZa1hPUUtFPQ==",
    },
    Case {
        user: "judy",
        password: "",
        password_hex: "",
        minute_ms: 1569643260000,
        inner: "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        field: "3LG8KnBcc8uaN3qESk/hW3Ti/+n54LdLlYgZvrB7BeE=",
        header: "Basic anVkeTozTEc4S25CY2M4dWFOM3FFU2svaFczVGkvK241NExkTGxZZ1p2ckI3QmVFPQ==",
    },
    Case {
        user: "mallory",
        password: MALLORY,
        password_hex: MALLORY_HEX,
        minute_ms: 1569643260000,
        inner: "fLsyCFKvbPe0P6Ka6Z48sESZEsz71XL/JEbNuWK9bDk=",
        field: "qXfqfD2WP5qiL73SY9/DZmTOdXIurWTxXdSxH/8HV58=",
        header: "Basic bWFsbG9yeTpxWGZxZkQyV1A1cWlMNzNTWTkvRFptVE9kWEl1cldUeFhkU3hILzhIVjU4PQ==",
    },
    Case {
        user: "alice",
        password: "pasSw0rD",
        password_hex: "7061735377307244",
        minute_ms: 56,
        inner: "AUiBnFUd+h5Wy2jsmdfmwRdKqTMBVNPuxZcRy3PYkxk=",
        field: "E4j6H9ASwKGVgkiNcRj47CGfRDlv1vYooDxEsFPEoDU=",
        header: "Basic YWxpY2U6RTRqNkg5QVN3S0dWZ2tpTmNSajQ3Q0dmUkRsdjF2WW9vRHhFc0ZQRW9EVT0=",
    },
];

/// The baseline minute, 2019-09-28T04:01Z.
const M: u64 = 1_569_643_260_000;

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn auth_vectors_hash_and_header() {
    for (i, c) in AUTH.iter().enumerate() {
        assert_eq!(
            c.password.as_bytes(),
            unhex(c.password_hex),
            "case {i}: password bytes"
        );
        assert_eq!(
            auth::stored_digest(c.password.as_bytes()),
            c.inner,
            "case {i}: inner"
        );
        assert_eq!(
            auth::password_field(c.inner, c.minute_ms),
            c.field,
            "case {i}: field"
        );
        assert_eq!(
            auth::authorization(c.user, c.inner, c.minute_ms),
            c.header,
            "case {i}: header"
        );
        let cred = auth::parse_basic(c.header).unwrap_or_else(|e| panic!("case {i}: {e:?}"));
        assert_eq!(cred.user, c.user, "case {i}: parsed user");
        assert_eq!(cred.field, c.field, "case {i}: parsed field");
        // Every field is base64 of 32 bytes: 44 characters ending in `=`.
        assert_eq!(c.field.len(), 44, "case {i}");
        assert!(c.field.ends_with('='), "case {i}");
    }
}

#[test]
fn seed_example_header_is_the_legacy_salt_56() {
    let seed = "Basic YWxpY2U6RTRqNkg5QVN3S0dWZ2tpTmNSajQ3Q0dmUkRsdjF2WW9vRHhFc0ZQRW9EVT0=";
    assert_eq!(AUTH[17].header, seed);
    let cred = auth::parse_basic(seed).unwrap();
    assert_eq!(cred.user, "alice");
    assert_eq!(cred.field, "E4j6H9ASwKGVgkiNcRj47CGfRDlv1vYooDxEsFPEoDU=");
    let stored = auth::stored_digest(b"pasSw0rD");
    assert_eq!(stored, "AUiBnFUd+h5Wy2jsmdfmwRdKqTMBVNPuxZcRy3PYkxk=");
    assert_eq!(auth::password_field(&stored, 56), cred.field);
    // It is left over from the old scheme: whole-minute salts do not give it.
    for m in [0, 60_000, M] {
        assert_ne!(auth::password_field(&stored, m), cred.field);
    }
}

#[test]
fn verify_window_is_minus_60s_to_plus_120s() {
    // The baseline credential was made for minute M.
    let (stored, field) = (AUTH[0].inner, AUTH[0].field);
    assert_eq!(AUTH[0].minute_ms, M);
    for now in [
        M - 60_000,
        M - 1,
        M,
        M + 1,
        M + 59_999,
        M + 60_000,
        M + 119_999,
    ] {
        assert!(
            auth::verify(field, stored, now),
            "rejected at M{:+}",
            i128::from(now) - i128::from(M)
        );
    }
    for now in [M - 60_001, M - 120_000, M + 120_000, M + 180_000, 0] {
        assert!(
            !auth::verify(field, stored, now),
            "accepted at M{:+}",
            i128::from(now) - i128::from(M)
        );
    }
    // A server at M takes the vectors for M-1 min, M and M+1 min, not ±2.
    assert_eq!(
        (AUTH[1].minute_ms, AUTH[2].minute_ms),
        (M + 60_000, M - 60_000)
    );
    for c in &AUTH[..3] {
        assert!(auth::verify(c.field, c.inner, M), "minute {}", c.minute_ms);
    }
    for m in [M - 120_000, M + 120_000] {
        assert!(!auth::verify(&auth::password_field(stored, m), stored, M));
    }
    // The password field must match exactly: another user's, another
    // password's, or a field without its padding is refused.
    assert!(!auth::verify(AUTH[7].field, stored, M));
    assert!(!auth::verify(field.trim_end_matches('='), stored, M));
}

/// Sends an upgrade with `key` and `authorization`; returns the response
/// head.
fn upgrade(server: std::net::SocketAddr, key: &str, authorization: &str) -> http::Head {
    let mut req = Vec::new();
    http::write_upgrade_request(&mut req, "/", "null", key, authorization, &[]);
    let mut s = connect(server);
    s.write_all(&req).unwrap();
    read_head(&mut s).0
}

const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// One name per vector user (every `alice` case shares `pasSw0rD`), given
/// every way a config can: `password` inline (YAML-quoted where the text
/// needs it, non-ASCII raw), `password_hash` inline (the only way to give
/// `judy` her empty password: `password: ""` is refused), and a
/// `users_file` holding both kinds.
const INLINE_USERS: &str = r#"    - name: alice
      password: pasSw0rD
    - name: "ālice"
      password: "pasSw0rD"
    - name: bob
      password_hash: "rI26TllhKsuxS4yuqyzwaJbSyR1/yV/edDshbJc6x9Y="
    - name: frank
      password: "pa:ss:word"
    - name: grace
      password: "a,b"
    - name: heidi
      password: " spaced pw "
    - name: ivan
      password: x
    - name: judy
      password_hash: "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
"#;

const USERS_FILE: &str = r#"- name: carol
  password: "pässwörd"
- name: dave
  password: 密码测试
- name: erin
  password: "🔑key🗝"
- name: mallory
  password_hash: fLsyCFKvbPe0P6Ka6Z48sESZEsz71XL/JEbNuWK9bDk=
"#;

#[test]
fn server_accepts_every_vector_user_for_the_current_minute_only() {
    let dir = temp_dir();
    let users_file = dir.join("users.yaml");
    std::fs::write(&users_file, USERS_FILE).unwrap();
    let mut yaml = String::from("log_level: debug\nserver:\n  listen: [\"127.0.0.1:0\"]\n");
    yaml += &format!("  users_file: \"{}\"\n", users_file.display());
    yaml += &format!("  users:\n{INLINE_USERS}");
    // The same file passes `check`, which counts the users of both sources.
    let cfg = dir.join("websocks.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let out = run(&["check", "-c", cfg.to_str().unwrap()], None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ok (12 users)"), "{out:?}");

    let d = Daemon::server(&yaml);
    let mut seen = Vec::new();
    for c in AUTH.iter().filter(|c| c.minute_ms > 56) {
        if seen.contains(&c.user) {
            continue;
        }
        seen.push(c.user);
        let now = auth::minute_of(now_ms());
        let h = upgrade(
            d.addr(),
            RFC_KEY,
            &auth::authorization(c.user, c.inner, now),
        );
        assert_eq!(h.second, "101", "user {} at the current minute", c.user);
        assert_eq!(
            h.one("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        for skew in [now - 2 * auth::MINUTE_MS, now + 2 * auth::MINUTE_MS] {
            let h = upgrade(
                d.addr(),
                RFC_KEY,
                &auth::authorization(c.user, c.inner, skew),
            );
            assert_eq!(
                h.second, "401",
                "user {} at minute {skew} (now {now})",
                c.user
            );
        }
    }
    assert_eq!(seen.len(), 12);
    let _ = std::fs::remove_dir_all(&dir);
}

/// All 11 pairs of `accept.json`.
const ACCEPT: [(&str, &str); 11] = [
    ("dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ("x3JJHMbDL1EzLkh9GBhXDw==", "HSmrc0sMlYUkAGmm5OPpG2HaGWk="),
    ("AAAAAAAAAAAAAAAAAAAAAA==", "ICX+Yqv66kxgM0FcWaLWlFLwTAI="),
    ("/////////////////////w==", "XXpj4jYzLM2yUE0C7TIgMwTQh2g="),
    ("AAECAwQFBgcICQoLDA0ODw==", "Bz3qJYTGdOe8gUSpLosEdiLKDrk="),
    ("u5C9jOCaPFkLjmEaa4Jcrw==", "8ovm0ogITlfN0pvFm0rOc0Ufe4g="),
    ("/Wg2YoYUv4EAuTYeSXtSyg==", "xq0s/74JLWr3l+M5wjDQbixA9IY="),
    ("kbf9SocAyslpzGcviOt2Mg==", "U/cwOuWSHhWSXGiAHHdzWbdw33c="),
    ("3pmBIKBrJtQLHvGSAC7+ig==", "7PnA76V/lp/RcGQ+1+lf2QErgkQ="),
    ("1FcRe0hLfx2/o4zZA9kQ+A==", "JVPFK2eP8WDh4vFJQGQwPx6XZeo="),
    ("AAAA", "XB9IIzDTB5SFgH/jYXFZTWYC8MY="),
];

#[test]
fn accept_vectors() {
    for (key, expected) in ACCEPT {
        assert_eq!(ws::accept(key), expected, "key {key}");
    }
}

#[test]
fn server_answers_each_key_with_its_accept() {
    let d = Daemon::server(&server_yaml(""));
    for (key, expected) in ACCEPT {
        let h = upgrade(d.addr(), key, &authorization(USER, PASS, 0));
        if key == "AAAA" {
            // A 3-byte key. RFC 6455 section 4.2.1 item 5 requires the key to
            // decode to 16 bytes; our server enforces it and answers 400,
            // where vproxy only checks that the key is base64 and answers 101.
            assert_eq!(h.second, "400", "key {key}");
            assert_eq!(h.count("sec-websocket-accept"), 0);
            continue;
        }
        assert_eq!(h.second, "101", "key {key}");
        assert_eq!(h.one("Sec-WebSocket-Accept"), Some(expected), "key {key}");
        assert_eq!(h.one("sec-websocket-protocol"), Some("socks5"));
    }
}

// ---- the command line ------------------------------------------------------

#[derive(Debug)]
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` (and `stdin`), bounded by 10 s.
fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_websocks"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn websocks");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let status = exit_within(&mut child, IO_TIMEOUT, &format!("websocks {args:?}"));
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Output {
        code: status.code().expect("exit code, not a signal"),
        stdout,
        stderr,
    }
}

/// The secret every `check` config carries, and its digest: neither may
/// ever be printed.
const SECRET: &str = "S3cret-never-print";
const SECRET_DIGEST: &str = "eoEPZg1pc++qE1QNbinOIz0FxFQFcB0b21BRKFE2uUw=";

/// A valid config, 5 lines; cases below append to it or replace it.
const VALID: &str = "server:
  listen: [\"127.0.0.1:0\"]
  users:
    - name: alice
      password: \"S3cret-never-print\"
";

/// Runs `check` on `yaml` written to a fresh directory (with `users.yaml`
/// holding `users` when given); returns the output and the config path.
fn check(yaml: &str, users: Option<&str>) -> (Output, String) {
    let dir = temp_dir();
    if let Some(u) = users {
        std::fs::write(dir.join("users.yaml"), u).unwrap();
    }
    let cfg = dir.join("websocks.yaml");
    std::fs::write(&cfg, yaml.replace("DIR", dir.to_str().unwrap())).unwrap();
    let out = run(&["check", "-c", cfg.to_str().unwrap()], None);
    let _ = std::fs::remove_dir_all(&dir);
    (out, cfg.display().to_string())
}

fn assert_no_secret(out: &Output) {
    for s in [SECRET, SECRET_DIGEST] {
        assert!(
            !out.stdout.contains(s) && !out.stderr.contains(s),
            "secret printed: {out:?}"
        );
    }
}

#[test]
fn check_accepts_a_valid_config() {
    assert_eq!(auth::stored_digest(SECRET.as_bytes()), SECRET_DIGEST);
    let (out, path) = check(VALID, None);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, format!("{path}: ok (1 users)\n"));
    assert_no_secret(&out);
    // Users from a users file count too.
    let users = format!("- name: bob\n  password_hash: {SECRET_DIGEST}\n");
    let (out, path) = check(
        &format!("{VALID}  users_file: DIR/users.yaml\n"),
        Some(&users),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, format!("{path}: ok (2 users)\n"));
    assert_no_secret(&out);
}

/// Bad configs: (what, yaml, users file). The comments give the line the
/// error is on, counted from 1 (`VALID` is lines 1-5).
fn bad_configs() -> Vec<(&'static str, String, Option<&'static str>)> {
    vec![
        (
            "unknown key",
            // line 5: the misspelt key
            VALID.replace("password:", "pasword:"),
            None,
        ),
        (
            "bad listen address",
            // line 2
            VALID.replace("127.0.0.1:0", "127.0.0.1"),
            None,
        ),
        (
            "bad duration",
            // line 7
            format!("{VALID}  timeouts:\n    idle: 5 parsecs\n"),
            None,
        ),
        (
            "bad destination rule",
            // line 7
            format!("{VALID}  destinations:\n    allow: [\"10.0.0.0/33\"]\n"),
            None,
        ),
        (
            "password and password_hash",
            // line 4 (the user), line 6 (the second of the two)
            format!("{VALID}      password_hash: \"{SECRET_DIGEST}\"\n"),
            None,
        ),
        (
            "duplicate user",
            // line 8: the second alice
            format!("{VALID}    - name: bob\n      password: x\n")
                + &format!("    - name: alice\n      password: \"{SECRET}2\"\n"),
            None,
        ),
        (
            "missing users file",
            // line 6
            format!("{VALID}  users_file: DIR/nope.yaml\n"),
            None,
        ),
        (
            "bad password_hash",
            // line 4 is the user; line 5 holds a password where its hash belongs
            VALID.replace("password:", "password_hash:"),
            None,
        ),
        (
            "unknown key in the users file",
            format!("{VALID}  users_file: DIR/users.yaml\n"),
            Some("- name: bob\n  pasword: S3cret-never-print\n"),
        ),
    ]
}

#[test]
fn check_rejects_bad_configs_with_78_naming_the_file_and_no_secret() {
    for (what, yaml, users) in bad_configs() {
        let (out, path) = check(&yaml, users);
        assert_eq!(out.code, 78, "{what}: {out:?}");
        assert_eq!(out.stdout, "", "{what}");
        assert_no_secret(&out);
        // The config, or for a users file that one.
        let dir = Path::new(&path)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(out.stderr.starts_with(&dir), "{what}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{what}: one line: {out:?}");
    }
}

#[test]
fn check_errors_name_line_and_key() {
    // (case, what follows the path, words the message must hold)
    let expect: &[(&str, &str, &[&str])] = &[
        ("unknown key", ":5: server.users[0]: ", &["pasword"]),
        (
            "bad listen address",
            ":2: server.listen[0]: ",
            &["127.0.0.1"],
        ),
        (
            "bad destination rule",
            ":7: server.destinations.allow[0]: ",
            &["10.0.0.0/33"],
        ),
        (
            "password and password_hash",
            ":4: server.users: ",
            &["alice", "password_hash"],
        ),
        (
            "bad password_hash",
            ":4: server.users: ",
            &["alice", "password_hash"],
        ),
    ];
    let cases = bad_configs();
    for (what, prefix, words) in expect {
        let (_, yaml, users) = cases.iter().find(|c| c.0 == *what).unwrap();
        let (out, path) = check(yaml, *users);
        assert_eq!(out.code, 78, "{what}: {out:?}");
        assert!(
            out.stderr.starts_with(&format!("{path}{prefix}")),
            "{what}: {out:?}"
        );
        for w in *words {
            assert!(out.stderr.contains(w), "{what}: no {w}: {out:?}");
        }
    }
    // In a users file: that file, its line, the key.
    let (_, yaml, users) = cases
        .iter()
        .find(|c| c.0 == "unknown key in the users file")
        .unwrap();
    let (out, path) = check(yaml, *users);
    let file = Path::new(&path).with_file_name("users.yaml");
    assert!(
        out.stderr.starts_with(&format!("{}:2: ", file.display())),
        "{out:?}"
    );
    assert!(out.stderr.contains("pasword"), "{out:?}");
}

#[test]

fn check_bad_duration_names_its_key_and_line() {
    // Today: `websocks.yaml:7: server.timeouts: `5 parsecs` has an unknown
    // unit (use ms, s, m or h)`, for the idle key on line 8.
    let yaml = format!("{VALID}  timeouts:\n    handshake: 10s\n    idle: 5 parsecs\n");
    let (out, path) = check(&yaml, None);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(
        out.stderr
            .starts_with(&format!("{path}:8: server.timeouts.idle: ")),
        "{out:?}"
    );
}

#[test]

fn check_bad_list_entry_names_its_line() {
    // Today: line 3 (the first entry) for the bad second entry on line 4.
    let yaml = VALID.replace(
        "listen: [\"127.0.0.1:0\"]",
        "listen:\n    - \"127.0.0.1:0\"\n    - \"127.0.0.1\"",
    );
    let (out, path) = check(&yaml, None);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(
        out.stderr.starts_with(&format!("{path}:4: server.listen")),
        "{out:?}"
    );
    // Today: line 8 for the bad rule on line 9.
    let yaml = format!(
        "{VALID}  destinations:\n    allow:\n      - \"10.0.0.0/8\"\n      - \"10.0.0.0/33\"\n"
    );
    let (out, path) = check(&yaml, None);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(
        out.stderr
            .starts_with(&format!("{path}:9: server.destinations.allow")),
        "{out:?}"
    );
}

#[test]

fn check_duplicate_user_names_the_duplicate() {
    let cases = bad_configs();
    let (_, yaml, users) = cases.iter().find(|c| c.0 == "duplicate user").unwrap();
    let (out, path) = check(yaml, *users);
    assert_eq!(out.code, 78, "{out:?}");
    // Today: `websocks.yaml:4: name: user `alice` is defined twice`.
    assert!(
        out.stderr
            .starts_with(&format!("{path}:8: server.users[2].name: ")),
        "{out:?}"
    );
}

#[test]

fn check_missing_users_file_names_config_line_and_key() {
    let cases = bad_configs();
    let (_, yaml, users) = cases.iter().find(|c| c.0 == "missing users file").unwrap();
    let (out, path) = check(yaml, *users);
    assert_eq!(out.code, 78, "{out:?}");
    // Today: `/tmp/.../nope.yaml: cannot read: No such file or directory (os error 2)`.
    assert!(
        out.stderr
            .starts_with(&format!("{path}:6: server.users_file: ")),
        "{out:?}"
    );
    assert!(out.stderr.contains("nope.yaml"), "{out:?}");
}

#[test]
fn hash_password_prints_the_stored_digest() {
    let out = run(&["hash-password"], Some("pasSw0rD\n"));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "AUiBnFUd+h5Wy2jsmdfmwRdKqTMBVNPuxZcRy3PYkxk=\n");
    assert!(!out.stderr.contains("pasSw0rD"), "{out:?}");
}

#[test]
fn version_and_usage_exit_codes() {
    let out = run(&["--version"], None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("websocks "), "{out:?}");
    let out = run(&["frobnicate"], None);
    assert_eq!(out.code, 64, "{out:?}");
    assert_eq!(out.stdout, "");
}
