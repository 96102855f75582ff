//! `[gateway]`, `[[consumer]]` and the routes' `auth`, `allow` and `rate_limit`: credentials kept
//! as digests, key files read with the config (their errors in their own file), and every
//! policy that could not work refused where it is written.

use super::*;
use crate::config::{Allow, AuthMethod, LimitPer};

const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

fn with(gateway: &str, route: &str) -> String {
    format!(
        "[dataplane]\ninterfaces = [\"eth0\"]\n{gateway}\n[[service]]\nname = \"api\"\n\
         vip = \"10.0.0.10:80\"\nmode = \"http\"\n[[service.backend]]\naddress = \"10.0.11.2:80\"\n\
         [[service.route]]\npools = [\"api\"]\n{route}"
    )
}

fn temp(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("understudy-cfg-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn consumers_and_a_route_policy() {
    let c = parse(&with(
        &format!(
            "[[consumer]]\nname = \"alice\"\ngroups = [\"partners\"]\napi_keys = [\"{DIGEST}\"]\n"
        ),
        "auth = [\"api_key\"]\nallow = [\"group:partners\", \"alice\"]\nconsumer_header = \"x-consumer\"\n\
         [service.route.rate_limit]\nrate = 0.5\nconcurrent = 4\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.gateway.consumers[0].name, "alice");
    assert_eq!(c.gateway.consumers[0].api_keys[0][..2], [0x2c, 0x26]);
    let policy = &c.services[0].mode.http().unwrap().routes[0].policy;
    assert_eq!(policy.auth, vec![AuthMethod::ApiKey]);
    assert_eq!(
        policy.allow,
        vec![
            Allow::Group("partners".into()),
            Allow::Consumer("alice".into())
        ]
    );
    let limit = policy.rate_limit.as_ref().unwrap();
    assert_eq!(
        limit.rate,
        Some((0.5, 1)),
        "the burst defaults to a second's worth, at least 1"
    );
    assert_eq!((limit.per, limit.concurrent), (LimitPer::Consumer, Some(4)));
    assert!(!policy.pass_credentials);
}

#[test]
fn secrets_are_refused_and_digests_must_be_whole() {
    let e = fails(
        &with(
            "[[consumer]]\nname = \"alice\"\napi_keys = [\"my-secret-key\"]\n",
            "auth = [\"api_key\"]\n",
        ),
        5,
        "consumer[0].api_keys",
        "not a SHA-256 digest",
        "sha256sum",
    );
    assert!(!e.to_string().contains("my-secret-key"), "{e}");
    fails(
        &with(
            "[[consumer]]\nname = \"alice\"\nbasic_password = \"sha256:abcd\"\n",
            "auth = [\"basic\"]\n",
        ),
        5,
        "consumer[0].basic_password",
        "not a SHA-256 digest",
        "64 hex digits",
    );
}

#[test]
fn a_policy_that_cannot_work_is_refused() {
    let alice = format!("[[consumer]]\nname = \"alice\"\napi_keys = [\"{DIGEST}\"]\n");
    fails(
        &with(&alice, "auth = [\"jwt\"]\n"),
        15,
        "service[0].route[0].auth",
        "nothing is configured for it",
        "[gateway.jwt]",
    );
    fails(
        &with(&alice, "auth = [\"basic\"]\n"),
        15,
        "service[0].route[0].auth",
        "\"basic\"",
        "basic_password",
    );
    fails(
        &with(&alice, "auth = \"everyone\"\n"),
        15,
        "service[0].route[0].auth",
        "\"none\" or a list",
        "auth = [\"jwt\"]",
    );
    fails(
        &with(&alice, "auth = [\"api_key\"]\nallow = [\"mallory\"]\n"),
        16,
        "service[0].route[0].allow",
        "no consumer is named \"mallory\"",
        "use one of alice",
    );
    fails(
        &with(&alice, "auth = [\"api_key\"]\nallow = [\"group:ops\"]\n"),
        16,
        "service[0].route[0].allow",
        "no consumer is in group \"ops\"",
        "[[consumer]]",
    );
    fails(
        &with(&alice, "allow = [\"alice\"]\n"),
        15,
        "service[0].route[0].allow",
        "does not authenticate",
        "add auth",
    );
    fails(
        &with(&alice, "[service.route.rate_limit]\nper = \"consumer\"\n"),
        15,
        "service[0].route[0].rate_limit",
        "limits nothing",
        "rate",
    );
    fails(
        &with(&alice, "[service.route.rate_limit]\nrate = 0\n"),
        16,
        "service[0].route[0].rate_limit.rate",
        "0 is not a rate",
        "above 0",
    );
    fails(
        &with(
            &format!("{alice}[[consumer]]\nname = \"alice\"\n"),
            "auth = [\"api_key\"]\n",
        ),
        7,
        "consumer[1].name",
        "already declared",
        "own name",
    );
}

#[test]
fn key_files_are_read_with_the_config_and_their_errors_name_them() {
    let consumers = temp(
        "consumers.toml",
        &format!("[[consumer]]\nname = \"bob\"\ngroups = [\"ops\"]\napi_keys = [\"{DIGEST}\"]\n"),
    );
    let text = with(
        &format!("[gateway]\nconsumers_file = \"{}\"\n", consumers.display()),
        "auth = [\"api_key\"]\nallow = [\"group:ops\"]\n",
    );
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.gateway.consumers[0].name, "bob");

    std::fs::write(
        &consumers,
        "[[consumer]]\nname = \"bob\"\n\napi_keys = [\"plain\"]\n",
    )
    .unwrap();
    let e = parse(&text).expect_err("a bad keys file refuses the config");
    assert_eq!(e.file, consumers);
    assert_eq!(
        (e.line, e.field.as_str()),
        (4, "consumer[0].api_keys"),
        "{e}"
    );

    let jwks = temp(
        "jwks.json",
        "{\"keys\": [\n{\"kty\": \"oct\", \"k\": 5}\n]}",
    );
    let e = parse(&with(
        &format!("[gateway.jwt]\njwks_file = \"{}\"\n", jwks.display()),
        "auth = [\"jwt\"]\n",
    ))
    .expect_err("a broken JWKS file refuses the config");
    assert_eq!(e.file, jwks, "{e}");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.problem.contains("not a JSON Web Key Set"), "{e}");

    std::fs::write(
        &jwks,
        "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"a\", \"k\": \"c2VjcmV0\"}]}",
    )
    .unwrap();
    let c = parse(&with(
        &format!("[gateway.jwt]\njwks_file = \"{}\"\n", jwks.display()),
        "auth = [\"jwt\"]\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let jwt = c.gateway.jwt.unwrap();
    assert_eq!(jwt.algorithms, vec![jsonwebtoken::Algorithm::HS256]);
    assert_eq!(
        (jwt.consumer_claim.as_str(), jwt.leeway.as_secs()),
        ("sub", 30)
    );
    for f in [consumers, jwks] {
        let _ = std::fs::remove_file(f);
    }
}
