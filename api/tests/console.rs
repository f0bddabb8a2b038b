//! The operator console in a real browser: the `surge` binary spawned on a free port,
//! headless Chromium driven through ChromeDriver with `fantoccini` (a WebDriver
//! client on a tokio runtime the browser owns), data seeded through the HTTP API.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); the test
//! fails, loudly, when they are missing. `CHROMIUM` / `CHROMEDRIVER` override the
//! paths. Screenshots of every step land in `console-screenshots/` of the target
//! directory (`target/console-screenshots/` by default).
//!
//! Every wait polls the page or the API until a bounded deadline; no fixed sleeps.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::{Value, json};

mod common;

use common::{Resp, TempDir, find_program, free_port, wait_for};

const ADMIN_TOKEN: &str = "console-admin-secret";
const OPERATOR_TOKEN: &str = "console-operator-secret";

// ------------------------------------------------------------------ the server

/// The real binary (`common::Server`) with the console's two tokens and async
/// durability, spoken to as admin.
struct Server {
    inner: common::Server,
    addr: SocketAddr,
    _data: TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server with extra environment (e.g. `SURGE_SHIP_SLA_MS`).
    fn start_with(env: &[(&str, &str)]) -> Server {
        let data = TempDir::new("console");
        let tokens = format!("admin:{ADMIN_TOKEN},operator:{OPERATOR_TOKEN}");
        let mut all = vec![
            ("SURGE_TOKENS", tokens.as_str()),
            ("SURGE_DURABILITY", "async"),
        ];
        all.extend_from_slice(env);
        let inner = common::Server::start_with(&data.data(), "console", &all);
        Server {
            addr: inner.addr,
            inner,
            _data: data,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let body = body.map(|b| b.to_string());
        self.inner.call(
            method,
            path,
            &[("Authorization", &auth), ("Accept", "application/json")],
            body.as_deref(),
        )
    }

    /// A call that must succeed; its JSON body.
    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, body);
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
        r.json()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn create_order(&self, order_no: &str, customer: &str, lines: Value) -> Value {
        self.ok(
            "POST",
            "/v1/orders",
            Some(json!({"order_no": order_no, "customer_id": customer, "lines": lines})),
        )
    }
    /// Pays order `id` its `amount` (no payment reference).
    fn pay(&self, id: &str, amount: u64) {
        self.ok(
            "POST",
            &format!("/v1/orders/{id}/pay"),
            Some(json!({ "amount": amount })),
        );
    }

    /// Takes a paid order through picking and packing to shipped with `tracking_no`.
    fn ship(&self, id: &str, tracking_no: &str) {
        for to in ["picking", "packed"] {
            self.ok(
                "POST",
                &format!("/v1/orders/{id}/transitions"),
                Some(json!({ "to": to })),
            );
        }
        self.ok(
            "POST",
            &format!("/v1/orders/{id}/transitions"),
            Some(json!({"to": "shipped", "tracking_no": tracking_no})),
        );
    }
}

// ------------------------------------------------------------------ the browser

/// `console-screenshots/` in the target directory (`target/<profile>/surge` is the
/// binary under test).
fn screenshots_dir() -> PathBuf {
    let target = common::surge_binary()
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/surge");
    target.join("console-screenshots")
}

/// ChromeDriver plus one headless Chromium session, driven with `fantoccini` from
/// this (blocking) test through a current-thread tokio runtime: each step is one
/// `block_on`, which also drives fantoccini's session task.
struct Browser {
    driver: Child,
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    _profile: TempDir,
    shots: PathBuf,
}

impl Browser {
    fn start() -> Browser {
        Browser::start_in(None)
    }

    /// A browser whose preferred languages (`navigator.languages`) start with `lang`.
    fn start_in(lang: Option<&str>) -> Browser {
        let chromium = find_program("CHROMIUM", &["chromium", "chromium-browser"]).expect(
            "Chromium not found: install Debian's `chromium` and `chromium-driver` \
             (apt-get install -y chromium chromium-driver) or set CHROMIUM",
        );
        let chromedriver = find_program("CHROMEDRIVER", &["chromedriver"]).expect(
            "ChromeDriver not found: install Debian's `chromium-driver` \
             (apt-get install -y chromium chromium-driver) or set CHROMEDRIVER",
        );
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut browser = Browser {
            driver,
            runtime,
            client: None,
            _profile: TempDir::new("profile"),
            shots: screenshots_dir(),
        };
        wait_for("chromedriver /status", || {
            common::request(addr, "GET", "/status", &[], None)
                .ok()
                .filter(|r| {
                    r.status == 200
                        && serde_json::from_str::<Value>(&r.body)
                            .is_ok_and(|v| v["value"]["ready"] == true)
                })
        });
        let profile = browser._profile.path().display().to_string();
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={profile}"),
        ];
        let mut prefs = json!({});
        if let Some(lang) = lang {
            args.push(format!("--lang={lang}"));
            prefs = json!({"intl.accept_languages": format!("{lang},en")});
        }
        let caps: fantoccini::wd::Capabilities = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": args,
                "prefs": prefs,
            },
        }))
        .unwrap();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = browser.on(ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://{addr}")));
        browser.client = Some(client.unwrap_or_else(|e| panic!("no WebDriver session: {e}")));
        std::fs::create_dir_all(&browser.shots).unwrap();
        browser
    }

    /// Run one WebDriver step to completion.
    fn on<T>(&self, step: impl Future<Output = T>) -> T {
        self.runtime.block_on(step)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a WebDriver session")
    }

    fn goto(&self, url: &str) {
        self.on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("WebDriver goto {url}: {e}"));
    }

    fn resize(&self, width: u32, height: u32) {
        self.on(self.client().set_window_size(width, height))
            .unwrap_or_else(|e| panic!("WebDriver resize: {e}"));
    }

    /// Run JavaScript in the page (the body of a function; `arguments` are `args`).
    fn js(&self, script: &str, args: Value) -> Value {
        let args = match args {
            Value::Array(args) => args,
            other => panic!("script arguments are an array, not {other}"),
        };
        self.on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("WebDriver script {script:.80}: {e}"))
    }

    fn element(&self, css: &str) -> Element {
        self.on(self.client().find(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("WebDriver find {css}: {e}"))
    }

    /// Click the element `css` finds. The page re-renders on live events, so an
    /// element found may be replaced before the click lands: find it again then.
    fn click(&self, css: &str) {
        for _ in 0..5 {
            match self.on(self.element(css).click()) {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() => {}
                Err(e) => panic!("WebDriver click {css}: {e}"),
            }
        }
        panic!("{css} kept being replaced");
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.on(element.clear())
            .unwrap_or_else(|e| panic!("WebDriver clear {css}: {e}"));
        self.on(element.send_keys(text))
            .unwrap_or_else(|e| panic!("WebDriver type into {css}: {e}"));
    }

    fn text(&self, css: &str) -> Option<String> {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([css]),
        )
        .as_str()
        .map(str::to_string)
    }

    fn exists(&self, css: &str) -> bool {
        self.js(
            "const e = document.querySelector(arguments[0]); return !!e && !e.closest('[hidden]');",
            json!([css]),
        )
        .as_bool()
        .unwrap()
    }

    /// [`wait_for`], with a screenshot of the page when it times out.
    fn wait<T>(&self, what: &str, probe: impl FnMut() -> Option<T>) -> T {
        let probe = std::cell::RefCell::new(probe);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(what, || (probe.borrow_mut())())
        })) {
            Ok(v) => v,
            Err(panic) => {
                self.screenshot("failure");
                let html = self.js("return document.body.innerText;", json!([]));
                eprintln!("page text at failure:\n{}", html.as_str().unwrap_or(""));
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Poll until `css` exists (and is not hidden) and its text contains `needle`.
    fn wait_text(&self, css: &str, needle: &str) -> String {
        self.wait(&format!("{css} to contain {needle:?}"), || {
            self.exists(css)
                .then(|| self.text(css))
                .flatten()
                .filter(|t| t.contains(needle))
        })
    }

    fn wait_exists(&self, css: &str) {
        wait_for(&format!("{css} to appear"), || {
            self.exists(css).then_some(())
        });
    }

    fn screenshot(&self, name: &str) {
        let png = self
            .on(self.client().screenshot())
            .unwrap_or_else(|e| panic!("WebDriver screenshot: {e}"));
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

// ------------------------------------------------------------------ the test

#[test]
fn console_in_a_real_browser() {
    let started = Instant::now();
    let server = Server::start();

    // Seed: WIDGET plenty, GADGET low (3 <= 5), EMPTY out of stock.
    for (sku, on_hand, low) in [("WIDGET", 10, 2), ("GADGET", 3, 5), ("EMPTY", 0, 1)] {
        server.ok(
            "PUT",
            &format!("/v1/skus/{sku}"),
            Some(json!({"on_hand": on_hand, "low_stock_threshold": low, "name": format!("{sku} name")})),
        );
    }
    // C-1001: paid and being picked; cancelling it puts 2 WIDGET back on hand.
    let c = server.create_order(
        "C-1001",
        "alice",
        json!([{"sku": "WIDGET", "qty": 2, "unit_price": 1250}]),
    );
    let c_id = c["id"].as_str().unwrap().to_string();
    server.ok(
        "POST",
        &format!("/v1/orders/{c_id}/pay"),
        Some(json!({"amount": 2500, "payment_ref": "pay-1"})),
    );
    server.ok(
        "POST",
        &format!("/v1/orders/{c_id}/transitions"),
        Some(json!({"to": "picking", "note": "aisle 4"})),
    );
    assert_eq!(server.ok("GET", "/v1/skus/WIDGET", None)["on_hand"], 8);
    // S-2001: shipped.
    let s = server.create_order(
        "S-2001",
        "bob",
        json!([{"sku": "WIDGET", "qty": 1, "unit_price": 999}]),
    );
    let s_id = s["id"].as_str().unwrap().to_string();
    server.pay(&s_id, 999);
    server.ship(&s_id, "TRACK-77");
    assert_eq!(server.ok("GET", "/v1/skus/WIDGET", None)["on_hand"], 7);

    let browser = Browser::start();

    // 1. The server wants a token: the page asks for one and then says what it may do.
    browser.goto(&server.url("/"));
    browser.wait_exists("#token-form");
    browser.wait_text("#token-why", "requires a token");
    browser.screenshot("01-token-required");
    browser.type_into("#token-input", OPERATOR_TOKEN);
    browser.type_into("#actor-input", "tester");
    browser.click("#token-save");
    browser.wait_text("#role-name", "operator");
    let role = browser.text("#role").unwrap();
    assert!(role.contains("adjust stock"), "role text: {role}");
    assert!(
        !browser.exists("#token-form"),
        "token form closes once valid"
    );

    // 2. Search by order number, then by customer.
    browser.type_into("#q-order-no", "C-10"); // a prefix
    browser.click("#search-btn");
    browser.wait_exists("#orders-table tr[data-order-no='C-1001']");
    assert!(!browser.exists("#orders-table tr[data-order-no='S-2001']"));
    browser.screenshot("02-search-by-number");
    browser.type_into("#q-order-no", "");
    browser.type_into("#q-customer", "bob");
    browser.click("#search-btn");
    browser.wait_exists("#orders-table tr[data-order-no='S-2001']");
    assert!(!browser.exists("#orders-table tr[data-order-no='C-1001']"));
    browser.type_into("#q-customer", "");
    browser.click("#search-btn");
    browser.wait_exists("#orders-table tr[data-order-no='C-1001']");
    let order_nos = browser.js(
        "return [...document.querySelectorAll('#orders-table tr[data-order-no]')].map(r => r.dataset.orderNo);",
        json!([]),
    );
    assert_eq!(order_nos, json!(["S-2001", "C-1001"]), "newest first");

    // 3. Open it: lines, total, payment, history.
    browser.click("#orders-table tr[data-order-no='C-1001'] a.order-link");
    browser.wait_text("#order-status", "picking");
    assert_eq!(browser.text("#order-total").unwrap(), "25.00");
    assert_eq!(browser.text("#order-payment").unwrap(), "paid");
    assert!(browser.exists("#order-lines tr[data-sku='WIDGET']"));
    let history = browser.js(
        "return [...document.querySelectorAll('#order-history li')].map(l => l.dataset.status);",
        json!([]),
    );
    assert_eq!(history, json!(["reserved", "confirmed", "picking"]));
    assert!(browser.text("#order-history").unwrap().contains("aisle 4"));
    assert!(browser.exists("#action-cancel"));
    assert!(browser.exists("#action-pack"));
    assert!(!browser.exists("#action-return"));
    browser.screenshot("03-order-picking");

    // 4. Cancel through the dialog: a reason is required; the dialog lists the units.
    browser.click("#action-cancel");
    browser.wait_exists("#cancel-dialog[open]");
    let focused = browser.js("return document.activeElement.id;", json!([]));
    assert_eq!(
        focused, "cancel-reason-select",
        "focus moves into the dialog"
    );
    browser.wait_text("#cancel-stock", "2 × WIDGET");
    browser.click("#cancel-confirm"); // no reason chosen yet
    assert!(
        browser.exists("#cancel-dialog[open]"),
        "a reason is required"
    );
    assert_eq!(
        server.ok("GET", &format!("/v1/orders/{c_id}"), None)["status"],
        "picking"
    );
    browser.click("#cancel-reason-select option[value='out_of_stock']");
    browser.type_into("#cancel-note-input", "shelf was empty");
    browser.screenshot("04-cancel-dialog");
    browser.click("#cancel-confirm");
    browser.wait_text("#order-status", "cancelled");
    assert!(!browser.exists("#cancel-dialog[open]"));
    browser.wait_text("#cancel-reason", "Out of stock");
    assert_eq!(browser.text("#cancel-note").unwrap(), "shelf was empty");
    assert!(!browser.exists("#action-cancel"));
    assert_eq!(browser.text("#order-payment").unwrap(), "refund due");
    browser.screenshot("05-order-cancelled");
    // The API agrees: status, reason, note, actor, and the stock is back.
    let c = server.ok("GET", &format!("/v1/orders/{c_id}"), None);
    assert_eq!(c["status"], "cancelled");
    assert_eq!(c["cancellation"]["reason"], "out_of_stock");
    assert_eq!(c["cancellation"]["note"], "shelf was empty");
    assert_eq!(c["cancellation"]["actor"], "operator:tester");
    let widget = server.ok("GET", "/v1/skus/WIDGET", None);
    assert_eq!(widget["on_hand"], 9, "2 units back on hand: {widget}");
    assert_eq!(widget["available"], 9, "{widget}");

    // 5. A shipped order: no cancel, says why; once delivered it offers return.
    browser.goto(&server.url(&format!("/#/order/{s_id}")));
    browser.wait_text("#order-status", "shipped");
    assert!(!browser.exists("#action-cancel"), "no cancel once shipped");
    browser.wait_text("#order-why", "can no longer be cancelled");
    assert!(browser.text("#order-why").unwrap().contains("Return"));
    assert!(browser.text("#order-body").unwrap().contains("TRACK-77"));
    browser.screenshot("06-order-shipped");
    browser.click("#action-deliver");
    browser.wait_exists("#action-dialog[open]");
    browser.click("#action-confirm");
    browser.wait_text("#order-status", "delivered");
    assert!(browser.exists("#action-return"));
    assert!(!browser.exists("#action-cancel"));
    browser.screenshot("07-order-delivered-offers-return");
    assert_eq!(
        server.ok("GET", &format!("/v1/orders/{s_id}"), None)["status"],
        "delivered"
    );

    // 6. Stock: low and out-of-stock rows highlighted; an inbound adjustment.
    browser.click("#nav-stock");
    browser.wait_exists("#stock-table tr[data-sku='EMPTY']");
    let classes = browser.js(
        "return Object.fromEntries([...document.querySelectorAll('#stock-table tr[data-sku]')].map(r => [r.dataset.sku, r.className]));",
        json!([]),
    );
    assert_eq!(
        classes,
        json!({"WIDGET": "", "GADGET": "low-stock", "EMPTY": "out-of-stock"})
    );
    browser.screenshot("08-stock");
    browser.type_into("#adjust-sku", "EMPTY");
    browser.type_into("#adjust-delta", "4");
    browser.type_into("#adjust-note", "pallet 12");
    // Submitted twice at once (a double click, Enter twice), it is sent once, with
    // an Idempotency-Key: it used to be applied twice.
    browser.js(
        "const real = window.fetch; window.adjustKeys = [];
         window.fetch = (url, opts) => {
           if (String(url).endsWith('/adjustments')) window.adjustKeys.push(opts.headers['Idempotency-Key']);
           return real(url, opts);
         };
         const form = document.querySelector('#adjust-form');
         form.requestSubmit();
         form.requestSubmit();",
        json!([]),
    );
    browser.wait_text("#adjust-result", "now 4 on hand");
    let keys = browser.js("return window.adjustKeys;", json!([]));
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    assert_eq!(keys[0].as_str().unwrap().len(), 32, "{keys}");
    browser.wait("EMPTY row to lose its out-of-stock highlight", || {
        let class = browser.js(
            "const r = document.querySelector(\"#stock-table tr[data-sku='EMPTY']\"); return r && r.className;",
            json!([]),
        );
        (class == "").then_some(())
    });
    assert_eq!(server.ok("GET", "/v1/skus/EMPTY", None)["on_hand"], 4);
    // A refused correction shows the API's words.
    browser.click("#adjust-reason option[value='correction']");
    browser.type_into("#adjust-delta", "-50");
    browser.click("#adjust-submit");
    browser.wait_text("#adjust-result", "Not applied");
    let refused = browser.text("#adjust-result").unwrap();
    assert!(refused.len() > "Not applied: ".len() + 5, "{refused}");
    // Sent again as it is, it is a new request (a new key): the engine remembers a
    // keyed refusal, and the same key would answer the old refusal for a day.
    browser.js(
        "document.querySelector('#adjust-result').textContent = '';",
        json!([]),
    );
    browser.click("#adjust-submit");
    browser.wait_text("#adjust-result", "Not applied");
    let keys = browser.js("return window.adjustKeys;", json!([]));
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_ne!(keys[1], keys[2], "{keys:?}");
    browser.screenshot("09-stock-adjusted");

    // 7. The live panel follows orders created while the page is open.
    browser.wait_text("#live-state", "live");
    let seen_before: u64 = browser.text("#orders-seen").unwrap().parse().unwrap();
    for n in 1..=3 {
        server.create_order(
            &format!("L-{n}"),
            "carol",
            json!([{"sku": "WIDGET", "qty": 1, "unit_price": 500}]),
        );
    }
    // Each new order must reach the panel through the feed: all three, and the
    // server's own feed carries exactly those three for this customer.
    browser.wait("the live panel to count the new orders", || {
        let seen: u64 = browser.text("#orders-seen")?.parse().ok()?;
        (seen >= seen_before + 3).then_some(())
    });
    let feed = server.ok("GET", "/v1/events?after=0&limit=1000", None);
    let mut fed: Vec<String> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "order.created" && e["customer_id"] == "carol")
        .map(|e| e["order_no"].as_str().unwrap().to_string())
        .collect();
    fed.sort();
    assert_eq!(
        fed,
        ["L-1", "L-2", "L-3"],
        "the event feed carries every order"
    );
    for order_no in &fed {
        browser.wait_text("#ticker", &format!("{order_no} for carol"));
    }
    let rate = browser.text("#rate-orders").unwrap();
    assert_ne!(rate, "0", "orders/s over the last seconds");
    browser.wait("the cancellation to be in the reasons chart", || {
        let count = browser.js(
            "const b = document.querySelector('#cancel-chart rect.bar[data-reason=out_of_stock]'); return b && b.dataset.count;",
            json!([]),
        );
        (count == "1").then_some(())
    });
    browser.screenshot("10-live-panel");

    // 8. Errors in plain words, never a blank page.
    browser.goto(&server.url("/#/order/o999999"));
    browser.wait_exists("#error");
    let error = browser.text("#error-text").unwrap();
    assert!(
        !error.trim().is_empty() && error.contains("o999999"),
        "{error}"
    );
    browser.screenshot("11-error");

    // 9. A narrow window: still readable, nothing wider than the screen.
    browser.resize(420, 900);
    for (name, hash) in [
        ("12-narrow-orders", "#/orders".to_string()),
        ("13-narrow-order", format!("#/order/{c_id}")),
        ("14-narrow-stock", "#/stock".to_string()),
        ("15-narrow-ledger", "#/ledger".to_string()),
        ("16-narrow-order-zh", format!("#/order/{c_id}")),
        ("17-narrow-ledger-zh", "#/ledger".to_string()),
    ] {
        if name.ends_with("-zh") {
            browser.js("localStorage.setItem('surge.lang', 'zh-CN');", json!([]));
        }
        browser.goto(&server.url(&format!("/{hash}")));
        if name.ends_with("-zh") {
            browser.js("location.reload();", json!([]));
        }
        match name {
            "12-narrow-orders" => browser.wait_exists("#orders-table tr[data-order-no='L-3']"),
            "13-narrow-order" => {
                browser.wait_text("#order-status", "cancelled");
            }
            "16-narrow-order-zh" => {
                browser.wait_text("#order-status", "已取消");
            }
            "15-narrow-ledger" | "17-narrow-ledger-zh" => {
                browser.wait_exists("#ledger-table tr[data-kind='charge']")
            }
            _ => browser.wait_exists("#stock-table tr[data-sku='EMPTY']"),
        }
        let overflow = browser.js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            json!([]),
        );
        browser.screenshot(name);
        assert!(
            overflow.as_i64().unwrap() <= 1,
            "{name}: the page is {overflow}px wider than the window"
        );
    }
    eprintln!("console test took {:?}", started.elapsed());
}

// ------------------------------------------------------------------ languages

/// Open the console and give it the operator token.
fn sign_in(browser: &Browser, server: &Server) {
    sign_in_as(browser, server, OPERATOR_TOKEN);
}

fn sign_in_as(browser: &Browser, server: &Server, token: &str) {
    browser.goto(&server.url("/"));
    browser.wait_exists("#token-form");
    browser.type_into("#token-input", token);
    browser.type_into("#actor-input", "tester");
    browser.click("#token-save");
    browser.wait_exists("#role-name");
}

/// The texts of every element matching `css`, in document order.
fn texts(browser: &Browser, css: &str) -> Value {
    browser.js(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent.trim());",
        json!([css]),
    )
}

fn choose_language(browser: &Browser, lang: &str) {
    browser.click(&format!("#lang-select option[value='{lang}']"));
}

#[test]
fn console_speaks_chinese_and_english() {
    let server = Server::start();
    server.ok(
        "PUT",
        "/v1/skus/WIDGET",
        Some(json!({"on_hand": 10, "low_stock_threshold": 2, "name": "widget"})),
    );
    let o = server.create_order(
        "Z-1",
        "alice",
        json!([{"sku": "WIDGET", "qty": 2, "unit_price": 1250}]),
    );
    let id = o["id"].as_str().unwrap().to_string();
    server.pay(&id, 2500);
    server.ok(
        "POST",
        &format!("/v1/orders/{id}/transitions"),
        Some(json!({"to": "picking"})),
    );

    // An English browser gets English; both dictionaries have the same keys.
    let browser = Browser::start();
    sign_in(&browser, &server);
    assert_eq!(
        browser.js("return window.surgeI18n.missingKeys();", json!([])),
        json!([]),
        "the zh-CN and en dictionaries differ"
    );
    assert_eq!(
        browser.js("return document.documentElement.lang;", json!([])),
        "en"
    );
    browser.wait_exists("#orders-table tr[data-order-no='Z-1']");
    assert_eq!(browser.text("#nav-orders").unwrap(), "Orders");
    assert_eq!(
        texts(&browser, "#orders-table tr[data-order-no='Z-1'] .badge"),
        json!(["picking", "paid"])
    );

    // Switch to Chinese: labels, status names, payment names and the role change.
    choose_language(&browser, "zh-CN");
    browser.wait_text("#nav-orders", "订单");
    assert_eq!(
        browser.js("return document.documentElement.lang;", json!([])),
        "zh-CN"
    );
    browser.wait("the list in Chinese", || {
        (texts(&browser, "#orders-table tr[data-order-no='Z-1'] .badge")
            == json!(["拣货中", "已付款"]))
        .then_some(())
    });
    assert_eq!(browser.text("#orders-h").unwrap(), "订单");
    assert_eq!(browser.text("label[for='q-order-no']").unwrap(), "订单号");
    assert_eq!(browser.text("#search-btn").unwrap(), "查询");
    assert_eq!(browser.text("#role-name").unwrap(), "运营");
    let statuses = texts(&browser, "#q-status option");
    assert_eq!(
        statuses,
        json!([
            "全部",
            "待付款",
            "已确认",
            "拣货中",
            "已打包",
            "已发货",
            "已签收",
            "已完成",
            "已过期",
            "已取消",
            "已退货"
        ])
    );
    assert_eq!(
        texts(&browser, "#q-payment option"),
        json!(["全部", "未付款", "已付款", "部分退款", "待退款", "已退款"])
    );
    browser.screenshot("i18n-01-orders-zh");

    // The order: status, actions, history and the cancel reasons.
    browser.click("#orders-table tr[data-order-no='Z-1'] a.order-link");
    browser.wait_text("#order-status", "拣货中");
    assert_eq!(browser.text("#order-payment").unwrap(), "已付款");
    assert_eq!(browser.text("#action-pack").unwrap(), "标记已打包");
    assert_eq!(browser.text("#action-cancel").unwrap(), "取消订单…");
    assert_eq!(
        texts(&browser, "#order-history li .badge"),
        json!(["待付款", "已确认", "拣货中"])
    );
    assert_eq!(browser.text("#lines-h").unwrap(), "商品明细");
    browser.screenshot("i18n-02-order-zh");
    browser.click("#action-cancel");
    browser.wait_exists("#cancel-dialog[open]");
    assert_eq!(
        texts(&browser, "#cancel-reason-select option"),
        json!([
            "请选择原因…",
            "客户要求",
            "缺货",
            "支付失败",
            "疑似欺诈",
            "系统错误",
            "其他"
        ])
    );
    browser.screenshot("i18n-03-cancel-zh");
    browser.click("#cancel-abort");
    assert!(!browser.exists("#cancel-dialog[open]"));

    // The other pages.
    browser.click("#nav-stock");
    browser.wait_exists("#stock-table tr[data-sku='WIDGET']");
    assert_eq!(browser.text("#stock-h").unwrap(), "库存");
    assert_eq!(browser.text("#adjust-submit").unwrap(), "提交调整");
    browser.screenshot("i18n-04-stock-zh");
    browser.click("#nav-ledger");
    browser.wait_text("#ledger-h", "资金流水");
    assert_eq!(
        texts(&browser, "#l-kind option"),
        json!(["全部", "收款", "退款", "撤销核销"])
    );
    browser.screenshot("i18n-05-ledger-zh");
    browser.click("#nav-stats");
    browser.wait_text("#stats-h", "报表");
    assert_eq!(
        texts(&browser, "#st-group option"),
        json!(["日", "小时", "SKU", "客户", "取消原因", "渠道"])
    );
    browser.screenshot("i18n-06-stats-zh");

    // Problem documents: the title translated, the detail as the server gave it.
    browser.goto(&server.url("/#/order/o999999"));
    browser.wait_exists("#error");
    let error = browser.wait_text("#error-text", "o999999");
    assert!(error.starts_with("订单不存在"), "{error}");
    browser.screenshot("i18n-07-error-zh");

    // The choice survives a reload.
    browser.goto(&server.url("/#/orders"));
    browser.js("location.reload();", json!([]));
    browser.wait_text("#nav-orders", "订单");
    browser.wait_exists("#orders-table tr[data-order-no='Z-1']");
    assert_eq!(
        browser.js("return localStorage.getItem('surge.lang');", json!([])),
        "zh-CN"
    );
    browser.wait_text("#live-state", "实时");

    // And back to English.
    choose_language(&browser, "en");
    browser.wait_text("#nav-orders", "Orders");
    browser.wait("the list in English", || {
        (texts(&browser, "#orders-table tr[data-order-no='Z-1'] .badge")
            == json!(["picking", "paid"]))
        .then_some(())
    });
    browser.wait_text("#live-state", "live");
    assert_eq!(
        browser.js("return window.surgeI18n.missed();", json!([])),
        json!([]),
        "texts asked for that no dictionary has"
    );
    drop(browser);

    // A browser that prefers Chinese starts in Chinese, without choosing.
    let zh = Browser::start_in(Some("zh-CN"));
    zh.goto(&server.url("/"));
    zh.wait_text("#nav-orders", "订单");
    assert_eq!(zh.text("#token-save").unwrap(), "使用令牌");
    zh.wait_text("#token-why", "此服务器需要令牌");
    zh.screenshot("i18n-08-token-zh");
    sign_in(&zh, &server);
    zh.wait("the list in Chinese", || {
        (texts(&zh, "#orders-table tr[data-order-no='Z-1'] .badge") == json!(["拣货中", "已付款"]))
            .then_some(())
    });
    assert_eq!(
        zh.js("return window.surgeI18n.missed();", json!([])),
        json!([])
    );
}

// ------------------------------------------------------------------ v1.1 screens

/// Confirm the open action dialog and wait for it to close.
fn confirm_action(browser: &Browser) {
    browser.click("#action-confirm");
    browser.wait("the action dialog to close", || {
        (!browser.exists("#action-dialog[open]")).then_some(())
    });
}

fn open_action(browser: &Browser, action: &str) {
    browser.click(&format!("#action-{action}"));
    browser.wait_exists("#action-dialog[open]");
}

#[test]
fn console_v11_order_actions_and_ledger() {
    // A short shipping SLA, so that a paid order becomes delayed during the test.
    let server = Server::start_with(&[("SURGE_SHIP_SLA_MS", "1500")]);
    for (sku, on_hand) in [("WIDGET", 20), ("GADGET", 10)] {
        server.ok(
            "PUT",
            &format!("/v1/skus/{sku}"),
            Some(json!({"on_hand": on_hand, "low_stock_threshold": 1, "name": sku})),
        );
    }
    let order = server.ok(
        "POST",
        "/v1/orders",
        Some(json!({
            "order_no": "H-1", "customer_id": "dora", "channel": "tmall",
            "lines": [{"sku": "WIDGET", "qty": 3, "unit_price": 1000}],
            "shipping_address": {"name": "王小明", "phone": "13800000000", "province": "浙江省",
                "city": "杭州市", "district": "西湖区", "line1": "文三路 1 号", "postal_code": "310000"},
        })),
    );
    let id = order["id"].as_str().unwrap().to_string();
    let api_order = || server.ok("GET", &format!("/v1/orders/{id}"), None);

    let browser = Browser::start();
    sign_in(&browser, &server);
    browser.goto(&server.url(&format!("/#/order/{id}")));
    browser.wait_text("#order-status", "reserved");
    assert_eq!(browser.text("#order-channel").unwrap(), "tmall");
    assert!(browser.text("#order-address").unwrap().contains("杭州市"));
    // The buttons are the order's actions, no more, no fewer.
    let buttons = browser.js(
        "return [...document.querySelectorAll('#order-actions button')].map(b => b.dataset.action).sort();",
        json!([]),
    );
    let mut actions: Vec<String> = api_order()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    actions.sort();
    assert_eq!(buttons, json!(actions));
    browser.screenshot("v11-01-order");

    // 1. Hold with a reason and a note; the banner says who; then release.
    open_action(&browser, "hold");
    browser.click("#f-hold-reason option[value='address_check']");
    browser.type_into("#f-note", "call the customer");
    confirm_action(&browser);
    browser.wait_text("#hold-reason", "Address check");
    assert_eq!(browser.text("#hold-note").unwrap(), "call the customer");
    assert!(
        browser
            .text("#hold-actor")
            .unwrap()
            .contains("operator:tester")
    );
    assert!(browser.exists("#action-release_hold"));
    assert!(!browser.exists("#action-hold"));
    assert_eq!(api_order()["hold"]["reason"], "address_check");
    browser.screenshot("v11-02-held");
    choose_language(&browser, "zh-CN");
    browser.wait_text("#hold-reason", "地址核实");
    browser.screenshot("v11-02-held-zh");
    open_action(&browser, "modify");
    assert_eq!(browser.text("#action-confirm").unwrap(), "保存修改");
    browser.screenshot("v11-03-modify-zh");
    browser.click("#action-abort");
    choose_language(&browser, "en");
    browser.wait_text("#hold-reason", "Address check");
    open_action(&browser, "release_hold");
    // Released meanwhile by another operator: the refusal shows in the dialog, and
    // the page behind it is brought up to date (it kept offering the release).
    server.ok(
        "POST",
        &format!("/v1/orders/{id}/release-hold"),
        Some(json!({})),
    );
    browser.click("#action-confirm");
    browser.wait("the refusal", || {
        browser.exists("#action-error:not([hidden])").then_some(())
    });
    browser.wait("the hold banner to go", || {
        (!browser.exists("#order-hold")).then_some(())
    });
    assert!(browser.exists("#action-hold"));
    assert!(!browser.exists("#action-release_hold"));
    browser.click("#action-abort");
    assert!(api_order()["hold"].is_null());

    // 2. Modify: a refused increase shows the problem; a reduction needs a reason.
    open_action(&browser, "modify");
    browser.type_into("#m-lines .m-line:nth-child(1) .m-qty", "999");
    browser.click("#action-confirm");
    browser.wait_text("#action-error", "Not enough stock");
    browser.type_into("#m-lines .m-line:nth-child(1) .m-qty", "1");
    browser.click("#m-add");
    browser.type_into("#m-lines .m-line:nth-child(2) .m-sku", "GADGET");
    browser.type_into("#m-lines .m-line:nth-child(2) .m-qty", "2");
    browser.type_into("#m-lines .m-line:nth-child(2) .m-price", "5.00");
    browser.type_into("#m-addr-city", "宁波市");
    browser.click("#action-confirm");
    browser.wait_text("#action-error", "choose a reason");
    assert!(browser.exists("#action-dialog[open]"));
    browser.click("#m-reason option[value='out_of_stock']");
    browser.screenshot("v11-03-modify");
    confirm_action(&browser);
    browser.wait_exists("#order-lines tr[data-sku='GADGET']");
    let o = api_order();
    assert_eq!(
        o["lines"],
        json!([{"sku": "WIDGET", "qty": 1, "unit_price": 1000}, {"sku": "GADGET", "qty": 2, "unit_price": 500}])
    );
    assert_eq!(o["shipping_address"]["city"], "宁波市");
    assert_eq!(o["total"], 2000);
    assert!(browser.text("#order-address").unwrap().contains("宁波市"));

    // 3. Pay in the console; the money facts appear.
    open_action(&browser, "pay");
    confirm_action(&browser);
    browser.wait_text("#order-status", "confirmed");
    assert_eq!(browser.text("#order-paid-amount").unwrap(), "20.00");

    // 4. Delayed: past the SLA the order carries the badge and the filter finds it.
    browser.wait("the order to be delayed", || {
        (!api_order()["delayed_since"].is_null()).then_some(())
    });
    browser.goto(&server.url("/#/orders?delayed=true"));
    browser.wait_exists("#orders-table tr[data-order-no='H-1'] [data-testid='delayed-badge']");
    assert!(
        browser.js(
            "return document.querySelector('#q-delayed').checked;",
            json!([])
        ) == json!(true)
    );
    browser.screenshot("v11-04-delayed");
    // On hold: another order, held through the API, is the only one listed.
    let other = server.create_order(
        "H-2",
        "erin",
        json!([{"sku": "WIDGET", "qty": 1, "unit_price": 700}]),
    );
    let other_id = other["id"].as_str().unwrap();
    server.ok(
        "POST",
        &format!("/v1/orders/{other_id}/hold"),
        Some(json!({"reason": "fraud_check", "note": ""})),
    );
    browser.goto(&server.url("/#/orders"));
    browser.wait_exists("#orders-table tr[data-order-no='H-2']");
    browser.click("#q-on-hold");
    browser.click("#search-btn");
    browser.wait("only the held order", || {
        (texts(&browser, "#orders-table tr[data-order-no] a.order-link") == json!(["H-2"]))
            .then_some(())
    });
    // The export keeps the filters (and asks for a BOM: `console_v11_export_has_bom`).
    let export = export_url(&browser);
    assert!(
        export.contains("on_hold=true") && export.contains("bom=true"),
        "{export}"
    );
    let csv = server.call("GET", &export, None);
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert!(csv.body.contains("H-2"), "{}", csv.body);
    // The button fetches it with the token and hands it to the browser as a file.
    browser.click("#orders-export");
    browser.wait_text("#notice", "orders.csv");
    assert!(!browser.exists("#error"));
    browser.click("#q-on-hold");
    browser.click("#q-payment option[value='paid']");
    browser.type_into("#q-channel", "tmall");
    browser.click("#search-btn");
    browser.wait("only the paid tmall order", || {
        (texts(&browser, "#orders-table tr[data-order-no] a.order-link") == json!(["H-1"]))
            .then_some(())
    });

    // 5. Ship, then intercept in transit with restock: the refund becomes due.
    server.ship(&id, "SF123");
    browser.goto(&server.url(&format!("/#/order/{id}")));
    browser.wait_text("#order-status", "shipped");
    assert!(!browser.exists("#action-cancel"));
    // Paid, nothing due: a goodwill refund's amount is typed, not prefilled with
    // everything paid (one Enter used to refund it all).
    open_action(&browser, "refund");
    assert_eq!(
        browser.js(
            "return document.querySelector('#f-refund-amount').value;",
            json!([])
        ),
        ""
    );
    browser.click("#action-abort");
    open_action(&browser, "return");
    assert_eq!(
        browser.js("return document.querySelector('#f-kind').value;", json!([])),
        "intercepted"
    );
    browser.type_into("#f-reason", "wrong address");
    confirm_action(&browser);
    browser.wait_text("#order-status", "returned");
    assert_eq!(browser.text("#order-payment").unwrap(), "refund due");
    assert_eq!(browser.text("#order-refund-due-amount").unwrap(), "20.00");
    let o = api_order();
    assert_eq!(o["payment"]["refund_due_amount"], 2000);

    // 6. A partial refund, then the rest.
    open_action(&browser, "refund");
    assert_eq!(
        browser.js(
            "return document.querySelector('#f-refund-amount').value;",
            json!([])
        ),
        "20.00"
    );
    browser.type_into("#f-refund-amount", "5");
    browser.type_into("#f-reason", "first part");
    browser.type_into("#f-refund-ref", "RF-1");
    browser.screenshot("v11-05-refund");
    confirm_action(&browser);
    browser.wait_text("#order-refunded-amount", "5.00");
    assert_eq!(browser.text("#order-refund-due-amount").unwrap(), "15.00");
    let o = api_order();
    assert_eq!(o["payment"]["refunded_amount"], 500);
    assert_eq!(o["payment"]["refund_due_amount"], 1500);
    open_action(&browser, "refund");
    assert_eq!(
        browser.js(
            "return document.querySelector('#f-refund-amount').value;",
            json!([])
        ),
        "15.00"
    );
    confirm_action(&browser);
    browser.wait_text("#order-payment", "refunded");
    assert_eq!(api_order()["payment"]["status"], "refunded");
    browser.screenshot("v11-06-refunded");

    // 7. The ledger of that order: charge, reversal, two refunds; the CSV link.
    browser.click("#nav-ledger");
    browser.wait_exists("#ledger-table");
    browser.type_into("#l-order", &id);
    browser.click("#ledger-btn");
    // The page's first, unfiltered load can show the same rows (this is the only
    // order with money moved): wait for the search's own load too.
    browser.wait("the order's ledger", || {
        (browser.js(
            "return [...document.querySelectorAll('#ledger-table tr[data-kind]')].map(r => r.dataset.kind);",
            json!([]),
        ) == json!(["charge", "reversal", "refund", "refund"])
            && browser
                .js(
                    "return document.querySelector('#ledger-export').dataset.url;",
                    json!([]),
                )
                .as_str()
                .is_some_and(|url| url.contains("order_id=")))
        .then_some(())
    });
    let url = browser
        .js(
            "return document.querySelector('#ledger-export').dataset.url;",
            json!([]),
        )
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with("/v1/ledger/export.csv?order_id="), "{url}");
    browser.click("#ledger-export");
    browser.wait_text("#notice", "ledger.csv");
    let csv = server.call("GET", &url, None);
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert!(csv.body.contains("RF-1"), "{}", csv.body);
    browser.screenshot("v11-07-ledger");

    choose_language(&browser, "zh-CN");
    browser.click("#nav-ledger");
    browser.wait_exists("#ledger-table tr[data-kind='reversal']");
    browser.wait_text("#ledger-table tr[data-kind='reversal'] .badge", "撤销核销");
    browser.screenshot("v11-07-ledger-zh");
    assert_eq!(
        browser.js("return window.surgeI18n.missed();", json!([])),
        json!([])
    );
}

fn export_url(browser: &Browser) -> String {
    browser
        .js(
            "return document.querySelector('#orders-export').dataset.url;",
            json!([]),
        )
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn console_v11_export_has_bom() {
    let server = Server::start();
    server.ok(
        "PUT",
        "/v1/skus/WIDGET",
        Some(json!({"on_hand": 5, "low_stock_threshold": 1, "name": "小部件"})),
    );
    server.create_order(
        "B-1",
        "张三",
        json!([{"sku": "WIDGET", "qty": 1, "unit_price": 100}]),
    );
    let browser = Browser::start();
    sign_in(&browser, &server);
    browser.wait_exists("#orders-table tr[data-order-no='B-1']");
    let export = export_url(&browser);
    assert!(export.contains("bom=true"), "{export}");
    let csv = server.call("GET", &export, None);
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert!(csv.body.starts_with('\u{feff}'), "no BOM: {}", csv.body);
    assert!(csv.body.contains("张三"), "{}", csv.body);
}

#[test]
fn console_v11_reports_by_channel() {
    let server = Server::start();
    server.ok(
        "PUT",
        "/v1/skus/WIDGET",
        Some(json!({"on_hand": 20, "low_stock_threshold": 1, "name": "widget"})),
    );
    for (no, channel) in [("R-1", "tmall"), ("R-2", "tmall"), ("R-3", "jd")] {
        server.ok(
            "POST",
            "/v1/orders",
            Some(
                json!({"order_no": no, "customer_id": "c1", "channel": channel,
                "lines": [{"sku": "WIDGET", "qty": 1, "unit_price": 1000}]}),
            ),
        );
    }
    let browser = Browser::start();
    sign_in(&browser, &server);
    browser.wait_exists("#orders-table tr[data-order-no='R-3']");
    // A table row and a bar per channel.
    browser.click("#nav-stats");
    browser.wait_exists("#stats-form");
    browser.click("#st-group option[value='channel']");
    browser.click("#stats-btn");
    browser.wait_exists("#stats-table tr[data-key='tmall']");
    assert!(browser.exists("#stats-chart rect.stat-bar[data-key='tmall']"));
    browser.screenshot("v11-08-stats");
    choose_language(&browser, "zh-CN");
    browser.wait_text("#stats-h", "报表");
    browser.wait_exists("#stats-table tr[data-key='tmall']");
    browser.screenshot("v11-08-stats-zh");
    assert_eq!(
        browser
            .text("#stats-table tr[data-key='tmall'] td")
            .unwrap(),
        "2"
    );
    assert!(browser.exists("#stats-chart rect.stat-bar[data-key='jd']"));
    assert_eq!(
        browser.js("return window.surgeI18n.missed();", json!([])),
        json!([])
    );
}

/// The report page's rendering, from an answer shaped as API.md's grouped `/v1/stats`.
/// The page's `fetch` answers that one request with the canned document, so that the
/// table and the chart can be checked (and looked at) in both languages whatever the
/// server at hand serves; `console_v11_reports_by_channel` covers the real server.
#[test]
fn console_report_renders_groups() {
    let server = Server::start();
    let browser = Browser::start();
    sign_in(&browser, &server);
    let canned = json!({
        "from": "2026-11-23T00:00:00Z", "to": "2026-11-30T00:00:00Z", "tz": "Asia/Shanghai",
        "group_by": "reason",
        "groups": [
            {"key": "out_of_stock", "orders": 12, "cancelled": 12, "cancellation_rate": 1.0,
             "paid_amount": 0, "refunded_amount": 0, "units_sold": 0},
            {"key": "customer_request", "orders": 4, "cancelled": 4, "cancellation_rate": 1.0,
             "paid_amount": 39900, "refunded_amount": 39900, "units_sold": 0},
            {"key": "fraud_suspected", "orders": 1, "cancelled": 1, "cancellation_rate": 1.0,
             "paid_amount": 0, "refunded_amount": 0, "units_sold": 0},
        ],
    });
    browser.js(
        "const canned = arguments[0]; const real = window.fetch;
         window.fetch = (url, opts) => String(url).startsWith('/v1/stats?from=')
           ? Promise.resolve(new Response(JSON.stringify(canned), {status: 200, headers: {'Content-Type': 'application/json'}}))
           : real(url, opts);
         location.hash = '#/stats?from=2026-11-22T16%3A00%3A00.000Z&group_by=reason&tz=Asia%2FShanghai';",
        json!([canned]),
    );
    browser.wait_exists("#stats-table tr[data-key='out_of_stock']");
    assert_eq!(
        texts(&browser, "#stats-table tbody th"),
        json!(["Out of stock", "Customer request", "Fraud suspected"])
    );
    assert_eq!(
        texts(&browser, "#stats-table tr[data-key='customer_request'] td"),
        json!(["4", "4", "100.0%", "399.00", "399.00", "0"])
    );
    // By reason the rate is a share of every order of the window: its column says so.
    assert_eq!(
        browser.text("#stats-rate-h").unwrap(),
        "Share of all orders"
    );
    // One bar per group, the largest full width, the others in proportion.
    let widths = browser.js(
        "return [...document.querySelectorAll('#stats-chart rect.stat-bar')].map(r => Number(r.getAttribute('width')));",
        json!([]),
    );
    let widths: Vec<f64> = serde_json::from_value(widths).unwrap();
    assert_eq!(widths.len(), 3);
    assert!(
        (widths[1] / widths[0] - 4.0 / 12.0).abs() < 1e-6,
        "{widths:?}"
    );
    browser.screenshot("report-01-en");
    // Charting another metric redraws without asking the server again.
    browser.click("#st-metric option[value='paid_amount']");
    browser.wait("the chart of paid amounts", || {
        let v = browser.js(
            "const r = document.querySelector(\"#stats-chart rect.stat-bar[data-key='customer_request']\"); return r && r.dataset.value;",
            json!([]),
        );
        (v == "39900").then_some(())
    });
    choose_language(&browser, "zh-CN");
    browser.wait("the report in Chinese", || {
        (texts(&browser, "#stats-table tbody th") == json!(["缺货", "客户要求", "疑似欺诈"]))
            .then_some(())
    });
    assert_eq!(browser.text("#stats-btn").unwrap(), "生成报表");
    assert_eq!(browser.text("#stats-rate-h").unwrap(), "占全部订单比例");
    browser.screenshot("report-02-zh");
    assert_eq!(
        browser.js("return window.surgeI18n.missed();", json!([])),
        json!([])
    );
}

#[test]
fn console_v11_refusal_and_line_removal() {
    let server = Server::start();
    for sku in ["WIDGET", "GADGET"] {
        server.ok(
            "PUT",
            &format!("/v1/skus/{sku}"),
            Some(json!({"on_hand": 10, "low_stock_threshold": 1, "name": sku})),
        );
    }
    // Two lines; the console removes one (a partial cancel, so with a reason).
    let two = server.create_order(
        "M-1",
        "fay",
        json!([{"sku": "WIDGET", "qty": 1, "unit_price": 300}, {"sku": "GADGET", "qty": 4, "unit_price": 200}]),
    );
    let two_id = two["id"].as_str().unwrap().to_string();
    assert_eq!(server.ok("GET", "/v1/skus/GADGET", None)["available"], 6);
    // Shipped, then refused at the door without restock.
    let refused = server.create_order(
        "F-1",
        "gus",
        json!([{"sku": "WIDGET", "qty": 2, "unit_price": 450}]),
    );
    let refused_id = refused["id"].as_str().unwrap().to_string();
    server.pay(&refused_id, 900);
    server.ship(&refused_id, "YT9");
    let widget_on_hand = server.ok("GET", "/v1/skus/WIDGET", None)["on_hand"].clone();

    let browser = Browser::start();
    sign_in(&browser, &server);
    choose_language(&browser, "zh-CN");
    browser.goto(&server.url(&format!("/#/order/{two_id}")));
    browser.wait_text("#order-status", "待付款");
    open_action(&browser, "modify");
    browser.click("#m-lines .m-line:nth-child(2) .m-remove");
    browser.wait("one line left", || {
        (browser.js(
            "return document.querySelectorAll('#m-lines .m-line').length;",
            json!([]),
        ) == json!(1))
        .then_some(())
    });
    browser.click("#m-reason option[value='customer_request']");
    browser.type_into("#f-note", "客户只要一件");
    confirm_action(&browser);
    browser.wait("the GADGET line to go", || {
        (!browser.exists("#order-lines tr[data-sku='GADGET']")).then_some(())
    });
    browser.wait_text("#notice", "已保存");
    let o = server.ok("GET", &format!("/v1/orders/{two_id}"), None);
    assert_eq!(
        o["lines"],
        json!([{"sku": "WIDGET", "qty": 1, "unit_price": 300}])
    );
    assert_eq!(server.ok("GET", "/v1/skus/GADGET", None)["available"], 10);
    assert!(
        browser
            .text("#order-history")
            .unwrap()
            .contains("客户只要一件")
    );

    browser.goto(&server.url(&format!("/#/order/{refused_id}")));
    browser.wait_text("#order-status", "已发货");
    open_action(&browser, "return");
    browser.click("#f-kind option[value='refused']");
    browser.click("#f-restock option[value='false']");
    browser.type_into("#f-reason", "拒收");
    browser.screenshot("v11-09-refused-zh");
    confirm_action(&browser);
    browser.wait_text("#order-status", "已退货");
    assert_eq!(browser.text("#return-kind").unwrap(), "客户拒收");
    assert_eq!(browser.text("#order-payment").unwrap(), "待退款");
    let o = server.ok("GET", &format!("/v1/orders/{refused_id}"), None);
    assert_eq!(o["returned"]["kind"], "refused");
    assert_eq!(o["returned"]["restock"], false);
    assert_eq!(
        server.ok("GET", "/v1/skus/WIDGET", None)["on_hand"],
        widget_on_hand,
        "not restocked"
    );
    // A refund carries an Idempotency-Key, so confirming it again cannot pay twice.
    browser.js(
        "const real = window.fetch; window.refundKeys = [];
         window.fetch = (url, opts) => {
           if (String(url).endsWith('/refunds')) window.refundKeys.push(opts.headers['Idempotency-Key']);
           return real(url, opts);
         };",
        json!([]),
    );
    open_action(&browser, "refund");
    browser.type_into("#f-refund-amount", "1");
    confirm_action(&browser);
    browser.wait_text("#order-refunded-amount", "1.00");
    let keys = browser.js("return window.refundKeys;", json!([]));
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    assert_eq!(keys[0].as_str().unwrap().len(), 32, "{keys}");
    // More than can be refunded is stopped in the dialog, before the server.
    open_action(&browser, "refund");
    browser.type_into("#f-refund-amount", "8.01");
    browser.click("#action-confirm");
    assert_eq!(
        browser.js(
            "return document.querySelector('#f-refund-amount').validity.rangeOverflow;",
            json!([])
        ),
        json!(true)
    );
    assert!(browser.exists("#action-dialog[open]"));
    browser.screenshot("v11-10-refund-zh");
    browser.click("#action-abort");
    assert_eq!(
        browser.js("return window.surgeI18n.missed();", json!([])),
        json!([])
    );
}

/// The order's buttons are its actions less what the token's role may not do.
#[test]
fn console_roles_see_only_their_buttons() {
    let tokens = format!(
        "admin:{ADMIN_TOKEN},operator:{OPERATOR_TOKEN},viewer:console-viewer,storefront:console-shop"
    );
    let server = Server::start_with(&[("SURGE_TOKENS", &tokens)]);
    server.ok(
        "PUT",
        "/v1/skus/WIDGET",
        Some(json!({"on_hand": 5, "low_stock_threshold": 1, "name": "widget"})),
    );
    let o = server.create_order(
        "P-1",
        "hal",
        json!([{"sku": "WIDGET", "qty": 1, "unit_price": 100}]),
    );
    let id = o["id"].as_str().unwrap().to_string();
    let buttons = |browser: &Browser| {
        browser.js(
            "return [...document.querySelectorAll('#order-actions button')].map(b => b.dataset.action).sort();",
            json!([]),
        )
    };

    let browser = Browser::start();
    sign_in_as(&browser, &server, "console-viewer");
    browser.wait_text("#role-name", "viewer");
    browser.goto(&server.url(&format!("/#/order/{id}")));
    browser.wait_text("#order-status", "reserved");
    assert_eq!(buttons(&browser), json!([]));
    browser.wait_text(
        "#order-actions",
        "Your viewer token may not change this order.",
    );
    choose_language(&browser, "zh-CN");
    browser.wait_text("#order-actions", "您的只读令牌不能修改此订单。");
    drop(browser);

    let browser = Browser::start();
    sign_in_as(&browser, &server, "console-shop");
    browser.wait_text("#role-name", "storefront");
    browser.goto(&server.url(&format!("/#/order/{id}")));
    browser.wait_text("#order-status", "reserved");
    assert_eq!(buttons(&browser), json!(["cancel", "modify", "pay"]));
    browser.click("#action-cancel");
    browser.wait_exists("#cancel-dialog[open]");
    assert_eq!(
        browser.js(
            "return [...document.querySelectorAll('#cancel-reason-select option')].map(o => o.value);",
            json!([])
        ),
        json!(["", "customer_request", "payment_failed"])
    );
    browser.click("#cancel-abort");
    // No list for a storefront: it looks orders up by number.
    browser.click("#nav-orders");
    browser.wait_text("#orders-table", "look one up by its order number");
    assert!(!browser.exists("#orders-export"));
    browser.type_into("#q-order-no", "P-1");
    browser.click("#search-btn");
    browser.wait_exists("#orders-table tr[data-order-no='P-1']");
}

/// The instant (ms since the epoch) the browser reads in an RFC 3339 string or a
/// datetime-local value (local time), so the test does not depend on the time zone.
fn browser_ms(browser: &Browser, text: &str) -> i64 {
    browser
        .js("return new Date(arguments[0]).getTime();", json!([text]))
        .as_i64()
        .unwrap_or_else(|| panic!("the browser cannot read {text:?} as a date"))
}

/// Set a `datetime-local` input (WebDriver keys depend on the locale's segments).
fn set_datetime(browser: &Browser, css: &str, value: &str) {
    browser.js(
        "const e = document.querySelector(arguments[0]); e.value = arguments[1]; return e.value;",
        json!([css, value]),
    );
    // Chromium may shorten the value (`:00` seconds), never change the instant.
    let shown = browser.js(
        "return document.querySelector(arguments[0]).value;",
        json!([css]),
    );
    let shown = shown.as_str().unwrap_or_default();
    assert!(
        !shown.is_empty() && browser_ms(browser, shown) == browser_ms(browser, value),
        "{css} refused {value:?} (shows {shown:?})"
    );
}

/// Flash-sale rules on the stock page: an admin edits the limit and the window (with
/// millisecond instants, a refusal shown in the API's words, and clearing a side to
/// null); the API holds exactly what was saved and enforces it; the customer lookup
/// answers the count; every new label is translated.
#[test]
fn console_edits_flash_sale_rules_and_looks_up_a_customer() {
    let server = Server::start();
    server.ok(
        "PUT",
        "/v1/skus/FLASH",
        Some(json!({"on_hand": 10, "low_stock_threshold": 1, "name": "flash"})),
    );
    server.ok(
        "PUT",
        "/v1/skus/PLAIN",
        Some(json!({"on_hand": 5, "low_stock_threshold": 1, "name": "plain"})),
    );

    let browser = Browser::start();
    sign_in_as(&browser, &server, ADMIN_TOKEN);
    browser.wait_text("#role-name", "admin");
    browser.click("#nav-stock");
    browser.wait_exists("#stock-table tr[data-sku='FLASH']");
    assert_eq!(
        browser.text("#stock-table tr[data-sku='FLASH'] .sale-limit"),
        Some("none".into())
    );
    assert_eq!(
        browser.text("#stock-table tr[data-sku='FLASH'] .sale-window"),
        Some("always open".into())
    );

    // Limit 3, a window open since a past instant (with milliseconds) to a future one.
    browser.click("#stock-table tr[data-sku='FLASH'] .sale-edit");
    assert_eq!(
        browser.js(
            "return document.querySelector('#sale-sku').value;",
            json!([])
        ),
        json!("FLASH")
    );
    browser.type_into("#sale-limit", "3");
    let starts = "2020-01-02T03:04:05.678";
    let ends = "2099-12-31T23:59:59";
    set_datetime(&browser, "#sale-starts", starts);
    set_datetime(&browser, "#sale-ends", ends);
    browser.click("#sale-submit");
    browser.wait_text("#sale-result", "FLASH: limit per customer 3");
    let k = server.ok("GET", "/v1/skus/FLASH", None);
    assert_eq!(k["purchase_limit_per_customer"], 3);
    assert_eq!(k["on_hand"], 10, "the redefinition kept the stock");
    assert_eq!(k["name"], "flash");
    assert_eq!(k["low_stock_threshold"], 1);
    assert_eq!(
        browser_ms(&browser, k["sale_starts_at"].as_str().unwrap()),
        browser_ms(&browser, starts)
    );
    assert_eq!(
        browser_ms(&browser, k["sale_ends_at"].as_str().unwrap()),
        browser_ms(&browser, ends)
    );
    browser.wait_text("#stock-table tr[data-sku='FLASH'] .sale-limit", "3");
    browser.wait_text("#stock-table tr[data-sku='FLASH'] .sale-window", "on sale");
    // The form shows the saved instant back, milliseconds included.
    assert_eq!(
        browser.js(
            "return document.querySelector('#sale-starts').value;",
            json!([])
        ),
        json!(starts)
    );
    browser.screenshot("v12-01-sale-rules");

    // An end before the start: refused by the server, shown in its words; unchanged.
    set_datetime(&browser, "#sale-ends", "2019-06-01T00:00:00");
    browser.click("#sale-submit");
    browser.wait_text("#sale-result", "Not saved");
    let refused = browser.text("#sale-result").unwrap();
    assert!(refused.contains("Invalid request"), "{refused}");
    assert!(
        refused.contains("sale_ends_at: must be after sale_starts_at"),
        "{refused}"
    );
    assert_eq!(
        browser.js(
            "return document.querySelector('#sale-result').className;",
            json!([])
        ),
        json!("error-inline")
    );
    let again = server.ok("GET", "/v1/skus/FLASH", None);
    assert_eq!(again["sale_ends_at"], k["sale_ends_at"]);

    // Clearing the end saves null: open on that side.
    browser.click("#sale-ends-clear");
    browser.click("#sale-submit");
    browser.wait_text("#sale-result", "to open");
    let k = server.ok("GET", "/v1/skus/FLASH", None);
    assert_eq!(k["sale_ends_at"], Value::Null);
    assert!(k["sale_starts_at"].is_string(), "the start stays: {k}");
    assert_eq!(k["purchase_limit_per_customer"], 3);

    // The rules hold: a customer takes 2, then 2 more is over the limit of 3.
    let held = server.ok(
        "POST",
        "/v1/reservations",
        Some(json!({"lines": [{"sku": "FLASH", "qty": 2}], "customer_id": "ann"})),
    );
    assert_eq!(held["status"], "held");
    let over = server.call(
        "POST",
        "/v1/reservations",
        Some(json!({"lines": [{"sku": "FLASH", "qty": 2}], "customer_id": "ann"})),
    );
    assert_eq!(over.status, 409, "{}", over.body);
    assert_eq!(over.json()["code"], "purchase_limit_exceeded");

    // The lookup answers what counts for one customer.
    browser.type_into("#buyer-sku", "FLASH");
    browser.type_into("#buyer-customer", "ann");
    browser.click("#buyer-submit");
    browser.wait_text("#buyer-result", "ann has 2 of FLASH");
    assert_eq!(
        browser.js(
            "const e = document.querySelector('#buyer-result'); return [e.dataset.counted, e.dataset.limit];",
            json!([])
        ),
        json!(["2", "3"])
    );
    assert!(browser.text("#buyer-result").unwrap().contains("(1 left)"));
    // An unknown SKU is an error in the API's words.
    browser.type_into("#buyer-sku", "NOPE");
    browser.click("#buyer-submit");
    browser.wait_text("#buyer-result", "Lookup failed");
    assert!(
        browser
            .text("#buyer-result")
            .unwrap()
            .contains("Unknown SKU")
    );

    // A start in the future closes the sale: the row says so and the API refuses.
    browser.click("#stock-table tr[data-sku='FLASH'] .sale-edit");
    set_datetime(&browser, "#sale-starts", "2098-01-01T00:00:00");
    browser.click("#sale-submit");
    browser.wait_text(
        "#stock-table tr[data-sku='FLASH'] .sale-window",
        "not open yet",
    );
    let early = server.call(
        "POST",
        "/v1/reservations",
        Some(json!({"lines": [{"sku": "FLASH", "qty": 1}], "customer_id": "bob"})),
    );
    assert_eq!(early.status, 409, "{}", early.body);
    assert_eq!(early.json()["code"], "sale_not_open");
    assert!(early.json()["opens_at"].is_string(), "{}", early.body);

    // Typing another SKU loads its rules first; saving the shown ones sets them.
    browser.type_into("#sale-sku", "PLAIN");
    browser.click("#sale-submit");
    browser.wait_text("#sale-result", "Loaded the current rules of PLAIN");
    assert_eq!(
        browser.js(
            "return document.querySelector('#sale-starts').value;",
            json!([])
        ),
        json!("")
    );
    browser.type_into("#sale-limit", "1");
    browser.click("#sale-submit");
    browser.wait_text("#sale-result", "PLAIN: limit per customer 1; always open.");
    let plain = server.ok("GET", "/v1/skus/PLAIN", None);
    assert_eq!(plain["purchase_limit_per_customer"], 1);
    assert_eq!(plain["sale_starts_at"], Value::Null);
    assert_eq!(plain["on_hand"], 5);

    // The same page in Chinese.
    choose_language(&browser, "zh-CN");
    browser.wait_text("#stock-table thead", "每人限购");
    assert!(
        browser
            .text("#stock-table thead")
            .unwrap()
            .contains("销售时间")
    );
    browser.wait_text("#stock-table tr[data-sku='FLASH'] .sale-window", "未开售");
    assert_eq!(
        browser.text("#sale-form h2").unwrap(),
        "秒杀规则（限购与销售时间）"
    );
    assert_eq!(browser.text("#sale-ends-clear").unwrap(), "不设停售时间");
    browser.type_into("#buyer-sku", "FLASH");
    browser.type_into("#buyer-customer", "ann");
    browser.click("#buyer-submit");
    browser.wait_text("#buyer-result", "ann 在 FLASH 已占用、已确认或已下单 2 件");
    browser.screenshot("v12-02-sale-rules-zh");
    assert_eq!(
        browser.js("return window.surgeI18n.missed();", json!([])),
        json!([])
    );
    assert_eq!(
        browser.js("return window.surgeI18n.missingKeys();", json!([])),
        json!([])
    );
    drop(browser);

    // An operator may look customers up but not change the rules (PUT is admin only).
    let browser = Browser::start();
    sign_in_as(&browser, &server, OPERATOR_TOKEN);
    browser.wait_text("#role-name", "operator");
    browser.click("#nav-stock");
    browser.wait_exists("#stock-table tr[data-sku='FLASH'] .buyer-open");
    assert!(!browser.exists("#stock-table .sale-edit"));
    browser.wait_text("#sale-denied", "admin only");
    assert_eq!(
        browser.js(
            "return document.querySelector('#sale-submit').disabled;",
            json!([])
        ),
        json!(true)
    );
    browser.click("#stock-table tr[data-sku='FLASH'] .buyer-open");
    browser.type_into("#buyer-customer", "ann");
    browser.click("#buyer-submit");
    browser.wait_text("#buyer-result", "ann has 2 of FLASH");
}

/// From an outside probe: a role check the server did not answer (unreachable)
/// counted as allowed, so any token was shown as admin, with every action offered,
/// and stayed so once the server was back; and the admin probe (`PUT` with `{}`)
/// redefined an existing `console-role-probe` SKU, a logged write with an event on
/// every page load. Now an unanswered check leaves no access and is tried again
/// until answered, and the probes change nothing whatever SKUs exist.
#[test]
fn console_role_checks_grant_nothing_unanswered_and_write_nothing() {
    let tokens = format!("admin:{ADMIN_TOKEN},operator:{OPERATOR_TOKEN},viewer:console-viewer");
    let server = Server::start_with(&[("SURGE_TOKENS", &tokens)]);
    server.ok(
        "PUT",
        "/v1/skus/console-role-probe",
        Some(json!({"on_hand": 5, "name": "a real SKU"})),
    );
    // The feed's events (async durability: published at the next flush).
    let feed = || server.ok("GET", "/v1/events?after=0&limit=1000", None)["events"].clone();
    common::eventually("the SKU's event in the feed", || {
        feed().as_array().unwrap().len() == 1
    });

    let browser = Browser::start();
    sign_in_as(&browser, &server, ADMIN_TOKEN);
    browser.wait_text("#role-name", "admin");
    // A write of ours after the probes: once its event is in the feed, any event of
    // the probes would be before it.
    server.ok("PUT", "/v1/skus/AFTER", Some(json!({"on_hand": 1})));
    common::eventually("our write's event in the feed", || {
        feed()
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["sku"] == "AFTER")
    });
    let skus: Vec<Value> = feed()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sku"].clone())
        .collect();
    assert_eq!(
        skus,
        [json!("console-role-probe"), json!("AFTER")],
        "the role probes wrote to the log"
    );
    let sku = server.ok("GET", "/v1/skus/console-role-probe", None);
    assert_eq!(
        (sku["on_hand"].clone(), sku["name"].clone()),
        (json!(5), json!("a real SKU"))
    );

    // The server does not answer while a viewer's token is checked.
    browser.js(
        "window.realFetch = window.fetch; \
         window.fetch = () => Promise.reject(new TypeError('Failed to fetch')); return true;",
        json!([]),
    );
    browser.click("#token-toggle");
    browser.type_into("#token-input", "console-viewer");
    browser.click("#token-save");
    browser.wait_text("#role", "Access unknown");
    assert!(
        !browser.exists("#role-name"),
        "a role shown without an answer"
    );
    assert_eq!(
        browser.js("return document.body.dataset.role;", json!([])),
        json!("none")
    );
    // Answered again: the check is tried again, and finds the viewer.
    browser.js("window.fetch = window.realFetch; return true;", json!([]));
    browser.wait_text("#role-name", "viewer");
}
