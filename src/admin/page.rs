//! The live status page, `/admin/page`: one HTML file with its style and script inline
//! (`page.html`, built into the binary: no build step, nothing fetched from elsewhere). Its
//! script reads `/admin/status` every 2 s and `/admin/history` every 10 s and shows each pool's
//! replicas and their load, the scaler and its last decisions, the replica count over the last
//! hour, the peer gateways and recent events, or that the gateway stopped answering.
//!
//! With an admin token the page asks for it once — a form, or `?token=` in the address for a
//! bookmark or a kiosk — and answers with the read-only cookie of [`super::token`] and a
//! redirect to the bare address, so the token leaves the address bar. Its Content-Security-Policy
//! lets only the page's own inline script and style run, and lets them talk to this listener
//! alone.

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use super::token;
use crate::gateway::body::GatewayBody;
use crate::gateway::proxy::GatewayState;

pub const PATH: &str = "/admin/page";

const PAGE: &str = include_str!("page.html");

/// Asks for the token; `<!--message-->` says why again when one was refused.
const SIGN_IN: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer"><title>infergate status: sign in</title>
<style>
body { font: 16px/1.4 system-ui, "DejaVu Sans", sans-serif; max-width: 24rem; margin: 3rem auto; padding: 0 1rem; }
input, button { font: inherit; padding: .4rem; width: 100%; margin: .3rem 0; }
.bad { color: #b3261e; }
</style></head>
<body><h1>infergate status</h1><!--message-->
<form method="post" action="/admin/page">
<label for="token">Admin token (the gateway's INFERGATE_ADMIN_TOKEN)</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<button>Show the status</button>
</form></body></html>
"#;

/// Answers `/admin/page` (GET, or POST of the sign-in form).
pub async fn handle(state: &GatewayState, req: Request<Incoming>) -> Response<GatewayBody> {
    let Some(expected) = state.admin_token else {
        return match *req.method() {
            Method::GET => html(StatusCode::OK, PAGE.to_string()),
            Method::POST => see_page(None),
            _ => html(StatusCode::METHOD_NOT_ALLOWED, sign_in("")),
        };
    };
    let signed_in = token::authorized(Some(&expected), &req);
    let presented = match *req.method() {
        Method::GET => req.uri().query().and_then(|q| form_field(q, "token")),
        // A form without a readable token is a wrong token.
        Method::POST => Some(posted_token(req).await.unwrap_or_default()),
        _ => return html(StatusCode::METHOD_NOT_ALLOWED, sign_in("")),
    };
    match presented {
        Some(token) if token::is_token(&expected, &token) => see_page(Some(&expected)),
        Some(_) => html(
            StatusCode::UNAUTHORIZED,
            sign_in(r#"<p class="bad">That is not the admin token.</p>"#),
        ),
        None if signed_in => html(StatusCode::OK, PAGE.to_string()),
        None => html(StatusCode::UNAUTHORIZED, sign_in("")),
    }
}

/// The sign-in form's token (a small urlencoded body).
async fn posted_token(req: Request<Incoming>) -> Option<String> {
    let timeouts = crate::http_server::BodyTimeouts::DEFAULT;
    let body = crate::http_server::read_body(req.into_body(), 4096, timeouts)
        .await
        .ok()?;
    form_field(std::str::from_utf8(&body).ok()?, "token")
}

fn sign_in(message: &str) -> String {
    SIGN_IN.replace("<!--message-->", message)
}

/// 303 to the bare page, with the read cookie when a token was shown.
fn see_page(expected: Option<&[u8; 32]>) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::full(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    let headers = r.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static(PATH));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if let Some(expected) = expected {
        headers.insert(header::SET_COOKIE, token::set_cookie(expected));
    }
    r
}

fn html(status: StatusCode, body: String) -> Response<GatewayBody> {
    let policy = content_security_policy(&body);
    let mut r = Response::new(GatewayBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    r
}

/// Only the page's own inline `<script>` and `<style>` (by their SHA-256) run, and they reach
/// only this listener: a replica name or error message that slipped into markup could not
/// run, nor send anything elsewhere.
fn content_security_policy(html: &str) -> HeaderValue {
    let hashes = |tag: &str| {
        let all: Vec<String> = blocks(html, tag)
            .map(|block| {
                let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(block));
                format!("'sha256-{hash}'")
            })
            .collect();
        if all.is_empty() {
            "'none'".to_string()
        } else {
            all.join(" ")
        }
    };
    let policy = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        hashes("script"),
        hashes("style")
    );
    HeaderValue::from_str(&policy).expect("ASCII")
}

/// The contents of each `<tag>...</tag>` (written without attributes) in `html`.
fn blocks<'a>(html: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut rest = html;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let block = &rest[start..start + len];
        rest = &rest[start + len..];
        Some(block)
    })
}

/// The value of `name` in an `application/x-www-form-urlencoded` string (a query or a form).
fn form_field(encoded: &str, name: &str) -> Option<String> {
    encoded.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))?
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_reads_from_a_form_or_a_query() {
        assert_eq!(
            form_field("a=1&token=s3%2Fc+r%C3%A9t%3D", "token").as_deref(),
            Some("s3/c rét=")
        );
        assert_eq!(form_field("tokens=1", "token"), None);
        assert_eq!(form_field("token=%zz", "token"), None);
        assert_eq!(form_field("token=%4", "token"), None);
    }

    #[test]
    fn the_policy_names_exactly_the_pages_own_script_and_style() {
        let policy = content_security_policy(PAGE);
        let policy = policy.to_str().unwrap();
        let script = blocks(PAGE, "script").next().unwrap();
        assert!(script.contains("/admin/status"));
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
        assert!(
            policy.contains(&format!("script-src 'sha256-{hash}';")),
            "{policy}"
        );
        assert_eq!(blocks(PAGE, "script").count(), 1);
        assert_eq!(blocks(PAGE, "style").count(), 1);
        let sign_in = content_security_policy(SIGN_IN);
        assert!(sign_in.to_str().unwrap().contains("script-src 'none'"));
    }
}
