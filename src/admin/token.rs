//! Who may use the admin listener when `INFERGATE_ADMIN_TOKEN` is set. A client that sends the
//! token as a bearer token may read and act. A browser that showed the token once to the status
//! page ([`super::page`]) holds a cookie that lets it read under `/admin` (GET only), never act:
//! a page on another site that makes the browser send a request cannot make the gateway act.
//! The cookie holds the token's SHA-256, not the token.

use http::{HeaderMap, HeaderValue, Method, Request, header};

use crate::gateway::auth::digest;

/// The status page's cookie.
pub const COOKIE: &str = "infergate_admin";

/// Whether `req` may see `/metrics` and `/admin/*`: always when no token is set (`expected` is
/// its digest); else with `Authorization: Bearer <token>`, or the page's cookie for a read
/// under `/admin/`.
pub fn authorized<B>(expected: Option<&[u8; 32]>, req: &Request<B>) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| is_token(expected, token));
    bearer
        || (req.method() == Method::GET
            && req.uri().path().starts_with("/admin/")
            && has_cookie(req.headers(), expected))
}

/// Whether `token` is the admin token. Compared by digest: no early exit on the bytes of the
/// token itself.
pub fn is_token(expected: &[u8; 32], token: &str) -> bool {
    digest(token.trim()) == *expected
}

/// The `Set-Cookie` value that lets a browser read the admin pages: only sent back to
/// `/admin`, unreadable by scripts, never sent along from another site; gone when the
/// browser closes.
pub fn set_cookie(expected: &[u8; 32]) -> HeaderValue {
    let value = format!(
        "{COOKIE}={}; Path=/admin; HttpOnly; SameSite=Strict",
        hex(expected)
    );
    HeaderValue::from_str(&value).expect("hex is a valid header value")
}

fn has_cookie(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|value| unhex(value).is_some_and(|presented| same(&presented, expected)))
}

/// Compares in constant time: the cookie is the digest itself, so an early exit would tell
/// how many of its leading bytes a guess got right.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_cookie_lets_a_browser_read_admin_pages_but_never_act() {
        let expected = digest("s3cret");
        let set = set_cookie(&expected);
        let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
        assert!(
            !pair.contains("s3cret"),
            "the cookie holds the digest: {pair}"
        );
        let cookie = format!("theme=dark; {pair}");
        let with = |method: Method, path: &str| {
            authorized(
                Some(&expected),
                &request(method, path, &[("cookie", &cookie)]),
            )
        };
        assert!(with(Method::GET, "/admin/status"));
        assert!(with(Method::GET, "/admin/history"));
        assert!(!with(Method::POST, "/admin/actions"), "no acting by cookie");
        assert!(!with(Method::GET, "/metrics"), "only under /admin");
        let wrong = format!("{COOKIE}={}", hex(&digest("guess")));
        let forged = request(Method::GET, "/admin/status", &[("cookie", &wrong)]);
        assert!(!authorized(Some(&expected), &forged));
        for bad in ["", "zz", &"0".repeat(63), &"g".repeat(64)] {
            let cookie = format!("{COOKIE}={bad}");
            let req = request(Method::GET, "/admin/status", &[("cookie", &cookie)]);
            assert!(!authorized(Some(&expected), &req), "{bad:?}");
        }
    }

    #[test]
    fn the_bearer_token_reads_and_acts_and_no_token_means_open() {
        let expected = digest("s3cret");
        let bearer = [("authorization", "Bearer s3cret")];
        let post = request(Method::POST, "/admin/actions", &bearer);
        assert!(authorized(Some(&expected), &post));
        assert!(authorized(
            Some(&expected),
            &request(Method::GET, "/metrics", &bearer)
        ));
        let none = request(Method::GET, "/admin/status", &[]);
        assert!(!authorized(Some(&expected), &none));
        assert!(authorized(None, &none));
        assert!(is_token(&expected, "s3cret") && !is_token(&expected, "s3cre"));
    }
}
