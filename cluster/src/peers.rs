//! Several gateway replicas, one autoscaler decision: every replica counts the calls it routes,
//! and the one that holds the autoscaler's Lease decides from the sum of all their counts.
//!
//! A replica's Lease identity is its own URL (`--advertise-url`), so the Lease says where the
//! leader is. Every [`REPORT_EVERY`] the others send it their counts (`POST LOADS_PATH`, bearer:
//! the replicas' shared `--peer-token`), and at once when a call finds its function at zero (the
//! leader's autoscaler is poked as if the call were its own). The leader adds the reports that
//! are fresh (younger than [`FRESH_FOR`]) to its own counts: a replica that stops reporting
//! stops counting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use k8s_openapi::api::coordination::v1::Lease;
use serde::{Deserialize, Serialize};
use skython_gateway::error::{ApiError, ApiResult, ErrorCode};
use tokio::sync::mpsc;

use crate::{FunctionRef, Load};

pub const LOADS_PATH: &str = "/internal/v1/autoscaler/loads";
/// How often a replica reports to the leader.
pub const REPORT_EVERY: Duration = Duration::from_millis(100);
/// How long a report counts.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// How often a replica reads the Lease to learn who leads.
const LEADER_EVERY: Duration = Duration::from_secs(1);

/// One replica's counts, as sent to the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadReport {
    /// The sender's URL (its Lease identity).
    pub from: String,
    #[serde(default)]
    pub loads: Vec<FunctionLoad>,
    /// Functions a call found at zero on the sender: decide for them now.
    #[serde(default)]
    pub poke: Vec<FunctionRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionLoad {
    pub function: FunctionRef,
    pub in_flight: u32,
    pub queued: u32,
    pub started: u64,
    /// Left out at 0, so that a leader of the previous version (which denies unknown fields)
    /// reads most reports during an upgrade.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub claiming: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Adds the fresh reports' counts to `local`.
pub fn sum(
    mut local: HashMap<FunctionRef, Load>,
    reports: &HashMap<String, (Instant, Vec<FunctionLoad>)>,
    now: Instant,
) -> HashMap<FunctionRef, Load> {
    let fresh = reports
        .values()
        .filter(|(at, _)| now.saturating_duration_since(*at) < FRESH_FOR);
    for (_, loads) in fresh {
        for l in loads {
            let e = local.entry(l.function.clone()).or_default();
            e.in_flight = e.in_flight.saturating_add(l.in_flight);
            e.queued = e.queued.saturating_add(l.queued);
            e.started = e.started.wrapping_add(l.started);
            e.claiming = e.claiming.saturating_add(l.claiming);
        }
    }
    local
}

/// This replica's side of the exchange (both roles: it reports while another leads, and
/// receives while it leads).
pub struct Peers {
    /// This replica's URL, its Lease identity.
    me: String,
    token: String,
    reports: Mutex<HashMap<String, (Instant, Vec<FunctionLoad>)>>,
    http: reqwest::Client,
}

/// Decides for a function now (the local autoscaler's `poke`).
pub type Poke = Arc<dyn Fn(&FunctionRef) + Send + Sync>;

impl Peers {
    pub fn new(me: String, token: String) -> Result<Arc<Self>, reqwest::Error> {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(skython_gateway::serve::CLIENT_POOL_IDLE)
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .build()?;
        Ok(Arc::new(Peers {
            me,
            token,
            reports: Mutex::default(),
            http,
        }))
    }

    fn reports(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Vec<FunctionLoad>)>> {
        self.reports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `local` plus the other replicas' fresh counts (what the leader decides from).
    pub fn total(&self, local: HashMap<FunctionRef, Load>) -> HashMap<FunctionRef, Load> {
        sum(local, &self.reports(), Instant::now())
    }

    /// The leader's route for the others' reports.
    pub fn router(self: Arc<Self>, poke: Poke) -> axum::Router {
        axum::Router::new()
            .route(LOADS_PATH, post(receive))
            .with_state((self, poke))
    }

    /// Reports this replica's counts to whoever leads (read from the Lease `lease` in
    /// `namespace`), every [`REPORT_EVERY`] and at once for each function in `pokes`.
    pub async fn report(
        self: Arc<Self>,
        leases: kube::Api<Lease>,
        lease: String,
        local: crate::autoscaler::DemandSource,
        mut pokes: mpsc::UnboundedReceiver<FunctionRef>,
    ) {
        let mut leader: Option<String> = None;
        let mut read_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            let mut poke = Vec::new();
            tokio::select! {
                _ = tick.tick() => {}
                p = pokes.recv() => match p {
                    Some(f) => poke.push(f),
                    None => return,
                },
            }
            while let Ok(f) = pokes.try_recv() {
                poke.push(f);
            }
            if read_at.is_none_or(|at| at.elapsed() >= LEADER_EVERY) {
                read_at = Some(Instant::now());
                leader = match leases.get_opt(&lease).await {
                    Ok(l) => l
                        .and_then(|l| l.spec?.holder_identity)
                        .filter(|h| h.starts_with("http://") || h.starts_with("https://")),
                    Err(e) => {
                        tracing::debug!("reading the autoscaler's Lease: {e}");
                        leader
                    }
                };
            }
            let Some(url) = leader.as_deref().filter(|l| *l != self.me) else {
                continue;
            };
            let loads = (local)()
                .into_iter()
                .map(|(function, l)| FunctionLoad {
                    function,
                    in_flight: l.in_flight,
                    queued: l.queued,
                    started: l.started,
                    claiming: l.claiming,
                })
                .collect();
            let report = LoadReport {
                from: self.me.clone(),
                loads,
                poke,
            };
            let sent = self
                .http
                .post(format!("{}{LOADS_PATH}", url.trim_end_matches('/')))
                .bearer_auth(&self.token)
                .json(&report)
                .send()
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| match r.status() {
                    s if s.is_success() => Ok(()),
                    s => Err(format!("it answered {s}")),
                });
            match (sent, failing) {
                (Err(e), false) => {
                    tracing::warn!(leader = %url, "reporting counts to the autoscaling gateway failed: {e}");
                    failing = true;
                }
                (Ok(()), true) => {
                    tracing::info!(leader = %url, "reporting counts to the autoscaling gateway works again");
                    failing = false;
                }
                _ => {}
            }
        }
    }
}

async fn receive(
    State((peers, poke)): State<(Arc<Peers>, Poke)>,
    headers: HeaderMap,
    body: Result<Json<LoadReport>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<StatusCode> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !same(given.as_bytes(), peers.token.as_bytes()) {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "send the gateways' shared peer token (--peer-token) as `Authorization: Bearer ...`",
        ));
    }
    let Json(report) = body.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!("expected a load report: {e}"),
        )
    })?;
    for f in &report.poke {
        poke(f);
    }
    peers
        .reports()
        .insert(report.from, (Instant::now(), report.loads));
    Ok(StatusCode::NO_CONTENT)
}

/// Compares secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> FunctionRef {
        FunctionRef {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn load(function: FunctionRef, in_flight: u32, queued: u32, started: u64) -> FunctionLoad {
        FunctionLoad {
            function,
            in_flight,
            queued,
            started,
            claiming: 0,
        }
    }

    #[test]
    fn the_leader_decides_from_its_own_counts_plus_every_fresh_report() {
        let now = Instant::now();
        let local = HashMap::from([(
            f("a"),
            Load {
                in_flight: 2,
                queued: 1,
                started: 10,
                claiming: 1,
            },
        )]);
        let reports = HashMap::from([
            (
                "http://b".to_string(),
                (now, vec![load(f("a"), 3, 0, 5), load(f("z"), 1, 0, 1)]),
            ),
            (
                "http://c".to_string(),
                (
                    now,
                    vec![FunctionLoad {
                        claiming: 2,
                        ..load(f("a"), 1, 4, 2)
                    }],
                ),
            ),
        ]);
        let total = sum(local, &reports, now);
        assert_eq!(
            total[&f("a")],
            Load {
                in_flight: 6,
                queued: 5,
                started: 17,
                claiming: 3,
            }
        );
        assert_eq!(
            total[&f("z")],
            Load {
                in_flight: 1,
                queued: 0,
                started: 1,
                claiming: 0,
            }
        );
    }

    #[test]
    fn a_replica_that_stopped_reporting_stops_counting() {
        let now = Instant::now();
        let old = now - FRESH_FOR - Duration::from_millis(1);
        let reports = HashMap::from([("http://b".to_string(), (old, vec![load(f("a"), 9, 9, 9)]))]);
        assert!(sum(HashMap::new(), &reports, now).is_empty());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"token", b"token"));
        assert!(!same(b"token", b"tokem"));
        assert!(!same(b"token", b"token2"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn a_report_reads_from_camel_case_json() {
        let r: LoadReport = serde_json::from_str(
            r#"{"from":"http://b","loads":[{"function":{"namespace":"n","name":"f"},"inFlight":1,"queued":2,"started":3}],"poke":[]}"#,
        )
        .unwrap();
        assert_eq!(r.loads[0].queued, 2);
    }

    #[test]
    fn a_report_with_no_claims_under_way_reads_as_before() {
        let json = serde_json::to_value(load(f("a"), 1, 0, 1)).unwrap();
        assert!(json.get("claiming").is_none(), "{json}");
        let claiming = FunctionLoad {
            claiming: 2,
            ..load(f("a"), 1, 0, 1)
        };
        let back: FunctionLoad =
            serde_json::from_value(serde_json::to_value(&claiming).unwrap()).unwrap();
        assert_eq!(back, claiming);
    }
}
