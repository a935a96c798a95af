//! Custom domains end to end, offline. The DNS server is Debian's `pebble-challtestsrv` (from
//! the `pebble` package, installed by `.ci/run`): a real DNS server whose TXT records the test
//! sets and clears over its management API. A domain's TXT look-up fails before the record
//! exists (200 with `last_check_err`), verifies once it does, and the router then serves the
//! stack's first exposed service at that hostname; another team cannot take the hostname; the
//! daily re-check (clock injected) removes the route once the record has been gone 3 days.

use crate::runtime::{create, two_service_form, wait_healthy};
use crate::support::*;
use serde_json::json;
use stackyard_core::time::Millis;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const HOST: &str = "app.example.com";
const DAY_MS: i64 = 24 * 3600 * 1000;

/// A private `pebble-challtestsrv`: its DNS listener and management API, stopped by its pid.
/// Every name resolves to 127.0.0.1 (and to no IPv6 address: the servers here listen on
/// IPv4 loopback).
pub(crate) struct Challtestsrv {
    _process: Helper,
    pub(crate) dns: SocketAddr,
    mgmt: String,
}

impl Challtestsrv {
    pub(crate) fn start() -> Option<Challtestsrv> {
        let (dns, mgmt) = (
            stackyard_testkit::free_port().unwrap(),
            stackyard_testkit::free_port().unwrap(),
        );
        let mut cmd = Command::new("pebble-challtestsrv");
        cmd.args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{mgmt}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv6", ""]);
        Some(Challtestsrv {
            _process: start_helper(cmd, mgmt)?,
            dns: format!("127.0.0.1:{dns}").parse().unwrap(),
            mgmt: format!("http://127.0.0.1:{mgmt}"),
        })
    }

    async fn txt(&self, client: &reqwest::Client, verb: &str, value: Option<&str>) {
        self.txt_for(client, verb, HOST, value).await;
    }

    /// `set-txt` (with a value) or `clear-txt` of `_stackyard.<host>`.
    pub(crate) async fn txt_for(
        &self,
        client: &reqwest::Client,
        verb: &str,
        host: &str,
        value: Option<&str>,
    ) {
        let mut body = json!({ "host": format!("_stackyard.{host}.") });
        if let Some(v) = value {
            body["value"] = json!(v);
        }
        let res = client
            .post(format!("{}/{verb}", self.mgmt))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{verb}: {}", res.status());
    }
}

/// The daily re-check at `at`, run against the server's database as a second server would.
struct Recheck {
    dns: SocketAddr,
    at: Millis,
}

impl stackyard_server::serve::WithStore for Recheck {
    type Output = usize;
    async fn run<S: stackyard_core::store::Store>(self, store: S) -> anyhow::Result<usize> {
        let dns = stackyard_server::dns::Dns::new(Some(self.dns));
        Ok(stackyard_server::domains::recheck_due(&store, &dns, self.at).await)
    }
}

async fn via_host(client: &reqwest::Client, server: &Server, host: &str) -> u16 {
    client
        .get(format!("{}/", server.router.as_deref().unwrap()))
        .header("host", host)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_domain_verifies_through_dns_routes_to_the_stack_and_loses_its_route_after_3_days() {
    let Some(dns) = Challtestsrv::start() else {
        return;
    };
    let resolver = dns.dns.to_string();
    let (db, data, server) = local_server(&[
        "--dns-resolver",
        &resolver,
        "--public-hostname",
        "edge.stackyard.test",
        "--anonymous-ttl",
        "2s",
    ])
    .await;
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();
    let slug = create(&client, &server, Some(&token), two_service_form("domains")).await;
    wait_healthy(&client, &server, Some(&token), &slug).await;
    let domains = server.url(&format!("/api/v1/stacks/{slug}/domains"));

    let res = client
        .post(&domains)
        .bearer_auth(&token)
        .json(&json!({ "hostname": "App.Example.com" }))
        .send()
        .await
        .unwrap();
    let (code, added) = json_of(res).await;
    assert_eq!(code, 201, "{added}");
    let d = &added["domain"];
    assert_eq!(
        (&d["hostname"], &d["status"]),
        (&json!(HOST), &json!("pending_verification"))
    );
    assert_eq!(
        d["verification"]["txt"]["record_name"],
        format!("_stackyard.{HOST}")
    );
    assert_eq!(
        d["verification"]["cname"]["record_value"],
        "edge.stackyard.test"
    );
    let value = d["verification"]["txt"]["record_value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(value.starts_with("stackyard-verify-"), "{value}");
    let id = d["id"].as_str().unwrap().to_owned();
    let verify = format!("{domains}/{id}/verify");

    // Before the record exists: 200, with the reason.
    let (code, b) = json_of(
        client
            .post(&verify)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["domain"]["status"], "pending_verification");
    assert!(b["domain"]["last_check_err"].is_string(), "{b}");
    assert_eq!(via_host(&client, &server, HOST).await, 404);

    // The record set: verified and routed; the router serves the stack's `web` there.
    dns.txt(&client, "set-txt", Some(&value)).await;
    let (code, b) = json_of(
        client
            .post(&verify)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(
        (&b["domain"]["status"], &b["domain"]["verified"]),
        (&json!("routed"), &json!(true))
    );
    assert!(b["domain"]["last_check_err"].is_null(), "{b}");
    assert_eq!(via_host(&client, &server, HOST).await, 200);
    assert_eq!(
        via_host(&client, &server, &format!("{HOST}:443")).await,
        200
    );

    // Another team cannot take the hostname.
    let other = Command::new(BIN)
        .args(["admin", "create-team", "other", "--database-url", &db.url])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let other = String::from_utf8(other.stdout).unwrap().trim().to_owned();
    stackyard_testkit::leaks::register(&other);
    let theirs = create(&client, &server, Some(&other), two_service_form("theirs")).await;
    let res = client
        .post(server.url(&format!("/api/v1/stacks/{theirs}/domains")))
        .bearer_auth(&other)
        .json(&json!({ "hostname": HOST }))
        .send()
        .await
        .unwrap();
    let (code, b) = json_of(res).await;
    assert_eq!(
        (code, b["error"].as_str()),
        (409, Some("hostname_taken")),
        "{b}"
    );

    // The record removed: the daily re-checks keep the route for 3 days, then remove it.
    dns.txt(&client, "clear-txt", None).await;
    let store = stackyard_server::StoreArgs {
        data_dir: data.path().to_owned(),
        database_url: Some(db.url.clone()),
    };
    let now = stackyard_server::now().0;
    for day in 1..=4 {
        let at = Millis(now + day * (DAY_MS + 1000));
        let checked = stackyard_server::serve::with_store(
            &store,
            stackyard_server::serve::store_options_for(&store),
            Recheck { dns: dns.dns, at },
        )
        .await
        .unwrap();
        assert_eq!(checked, 1, "day {day}: one domain due");
        let (_, list) = json_of(
            client
                .get(&domains)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let status = list["items"][0]["status"].as_str().unwrap().to_owned();
        let expect = if day < 4 {
            "routed"
        } else {
            "pending_verification"
        };
        assert_eq!(status, expect, "day {day}: {list}");
    }
    // The server's next maintenance pass drops the route.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while via_host(&client, &server, HOST).await != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the route is still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let res = client
        .delete(format!("{domains}/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (code, b) = json_of(res).await;
    assert_eq!((code, &b["id"]), (200, &json!(id)), "{b}");
    let (_, list) = json_of(
        client
            .get(&domains)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["total"], 0);
}
