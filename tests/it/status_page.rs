//! The live status page (`/admin/page`) in a real browser: headless Chromium (Debian's
//! `chromium`, which `.ci/run` installs; these tests fail without it) loads it from a running
//! gateway, signs in with the admin token, and the replica count it shows follows the fleet
//! when an operator pins the pool to two replicas. And what the page's token asks of plain
//! HTTP clients.

use std::time::{Duration, Instant};

use http::Method;
use infergate::app::{App, Options};

use crate::support::*;

const TOKEN: &str = "page-s3cret";

/// A local pool at one replica that an operator can pin to more, behind the admin token.
async fn gateway() -> App {
    GatewayConfig::local(1, &["--speed", "10"])
        .pool(
            "scaler: {enabled: true, min_replicas: 1, max_replicas: 3, interval: 100ms,
                      scale_down_window: 1s, scale_down_stabilization: 1s, drain_timeout: 5s}",
        )
        .start_with(Options {
            admin_token: Some(TOKEN.into()),
            ..Default::default()
        })
        .await
}

async fn admin_get(gw: &App, path: &str, headers: &[(&str, &str)]) -> Reply {
    let url = format!("http://{}{path}", gw.admin_addr);
    send_with(Method::GET, &url, headers, bytes::Bytes::new()).await
}

fn assert_chromium() {
    assert!(
        std::process::Command::new("chromium")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the status page tests need Debian's `chromium` (apt-get install chromium; .ci/run installs it)"
    );
}

/// The page's DOM after its script ran, as headless Chromium renders `url` (a fresh profile,
/// no network beyond the URL: the flags turn off Chromium's own background connections).
async fn browser_dom(url: &str) -> String {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile =
        std::env::temp_dir().join(format!("infergate-chromium-{}-{run}", std::process::id()));
    let run = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Time enough (virtual: it stands still while a fetch is pending) for the first
            // reads of /admin/history and /admin/status and a render.
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromium renders the page within 60 s")
        .unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}): the status page test needs Debian's `chromium` (apt-get install chromium; .ci/run installs it)")
        });
    std::fs::remove_dir_all(&profile).ok();
    assert!(output.status.success(), "chromium failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The text of the element with `id` in `dom` (the first tag after it; None if absent).
fn shown(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let text = &dom[at..];
    let text = &text[text.find('>')? + 1..];
    Some(text[..text.find('<')?].to_string())
}

/// Loads the page until it shows a replica count of pool `p` (the first render needs the
/// gateway's answers; 30 s at most) and returns it with the DOM.
async fn replicas_shown(url: &str) -> (Option<u32>, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dom = browser_dom(url).await;
        let count = shown(&dom, "pool-p-replicas").and_then(|n| n.parse().ok());
        if count.is_some() || Instant::now() > deadline {
            return (count, dom);
        }
    }
}

#[tokio::test]
async fn the_status_page_in_a_browser_shows_the_fleet_scale() {
    assert_chromium();
    let gw = gateway().await;
    // The token in the address signs the browser in: a cookie, and the bare address.
    let url = format!("http://{}/admin/page?token={TOKEN}", gw.admin_addr);
    let (count, dom) = replicas_shown(&url).await;
    assert_eq!(count, Some(1), "one replica shown: {dom}");
    assert!(dom.contains(r#"data-state="live""#), "reading live: {dom}");
    assert!(dom.contains("127.0.0.1:"), "the replica's row: {dom}");
    assert!(!dom.contains(TOKEN), "the token is not in the page");

    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let pin = serde_json::json!({"action": "pin", "pool": "p", "replicas": 2});
    let url_actions = format!("http://{}/admin/actions", gw.admin_addr);
    let reply = send_with(Method::POST, &url_actions, &auth, pin.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = poll_until(
        Duration::from_secs(30),
        async || admin_get(&gw, "/admin/status", &auth).await.json(),
        |s| replicas(&s["pools"][0]).len() == 2,
    )
    .await;
    assert_eq!(replicas(&status["pools"][0]).len(), 2, "{status}");

    let (count, dom) = replicas_shown(&url).await;
    assert_eq!(count, Some(2), "two replicas shown: {dom}");
    assert_eq!(shown(&dom, "pool-p-desired").as_deref(), Some("2"), "{dom}");
    assert!(
        dom.contains("pinned at 2"),
        "the hold and the reason: {dom}"
    );
    assert!(
        dom.contains("Operator pin p 2 by 127.0.0.1:"),
        "the action among the events: {dom}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_status_page_says_when_it_cannot_read_the_gateway() {
    assert_chromium();
    // The page opened from a file: its reads of /admin/status have no gateway to reach.
    let file = std::env::temp_dir().join(format!("infergate-page-{}.html", std::process::id()));
    std::fs::write(&file, include_str!("../../src/admin/page.html")).unwrap();
    let dom = browser_dom(&format!("file://{}", file.display())).await;
    std::fs::remove_file(&file).ok();
    assert!(dom.contains(r#"data-state="disconnected""#), "{dom}");
    assert!(dom.contains(r#"<body class="offline">"#), "{dom}");
    assert!(dom.contains("Disconnected from the gateway"), "{dom}");
}

#[tokio::test]
async fn the_status_page_needs_the_admin_token_and_its_cookie_only_reads() {
    let gw = gateway().await;
    let page = admin_get(&gw, "/admin/page", &[]).await;
    assert_eq!(page.status, 401);
    assert!(
        page.text().contains("<form"),
        "a sign-in form: {}",
        page.text()
    );
    for path in ["/admin/status", "/admin/history", "/admin/page?token=wrong"] {
        assert_eq!(admin_get(&gw, path, &[]).await.status, 401, "{path}");
    }
    // The sign-in form's answer: a cookie that holds no token, and the bare page.
    let url = format!("http://{}/admin/page", gw.admin_addr);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let wrong = send_with(Method::POST, &url, &form, "token=nope").await;
    assert_eq!(wrong.status, 401);
    let signed = send_with(Method::POST, &url, &form, format!("token={TOKEN}")).await;
    assert_eq!(signed.status, 303);
    assert_eq!(signed.headers["location"], "/admin/page");
    let set_cookie = signed.headers["set-cookie"].to_str().unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains(TOKEN), "{set_cookie}");
    let cookie = [("cookie", set_cookie.split(';').next().unwrap())];

    let page = admin_get(&gw, "/admin/page", &cookie).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/admin/status"));
    let policy = page.headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    let status = admin_get(&gw, "/admin/status", &cookie).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["pools"][0]["name"], "p");
    // The sampler records the pool at once.
    let history = poll_until(
        Duration::from_secs(10),
        async || admin_get(&gw, "/admin/history", &cookie).await.json(),
        |h| h["pools"]["p"][0].is_object(),
    )
    .await;
    assert_eq!(history["every_s"], 10);
    assert_eq!(history["pools"]["p"][0]["replicas"], 1, "{history}");
    // The cookie reads; it never acts.
    let url_actions = format!("http://{}/admin/actions", gw.admin_addr);
    let pin = serde_json::json!({"action": "pin", "pool": "p", "replicas": 2}).to_string();
    let acted = send_with(Method::POST, &url_actions, &cookie, pin).await;
    assert_eq!(acted.status, 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_status_page_shows_a_models_versions_side_by_side() {
    assert_chromium();
    let (r1, r2) = (
        crate::versions::replica("chat-v1", 50.0).await,
        crate::versions::replica("chat-v2", 50.0).await,
    );
    let gw = crate::versions::start(&crate::versions::config(r1.addr, r2.addr, (90, 10), "")).await;
    let dom = browser_dom(&format!("http://{}/admin/page", gw.admin_addr)).await;
    assert!(dom.contains("data-version=\"v1\""), "{dom}");
    assert!(dom.contains("<b>v2</b> 10 %: 0 answers"), "{dom}");
    gw.shutdown().await;
}
