//! Injected faults: a FIFO queue of (endpoint, fault, remaining count). Each request to an
//! OAuth endpoint takes the oldest matching entry, if any, before normal processing.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{Value, json};

use crate::http::{Reply, Response};

/// Which endpoint a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Both discovery documents.
    Discovery,
    /// `/oauth/device/code`.
    DeviceAuthorization,
    /// `/oauth/token`.
    Token,
    /// `/oauth/revoke`.
    Revocation,
    /// Every OAuth endpoint: the four above plus userinfo, JWKS and introspection
    /// (not the HTML pages `/activate` and `/authorize`, nor `/admin/*`).
    Any,
}

impl Endpoint {
    /// Name used in the admin API and in request records.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Discovery => "discovery",
            Endpoint::DeviceAuthorization => "device_authorization",
            Endpoint::Token => "token",
            Endpoint::Revocation => "revocation",
            Endpoint::Any => "any",
        }
    }

    /// Parses an admin-API name (a few aliases accepted).
    pub fn from_name(name: &str) -> Option<Endpoint> {
        Some(match name {
            "discovery" => Endpoint::Discovery,
            "device_authorization" | "device" | "device_code" => Endpoint::DeviceAuthorization,
            "token" => Endpoint::Token,
            "revocation" | "revoke" => Endpoint::Revocation,
            "any" | "all" | "*" => Endpoint::Any,
            _ => return None,
        })
    }
}

/// A misbehaviour to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a JSON error body.
    Status(u16),
    /// Answer 429 `too_many_requests` with `Retry-After`.
    RateLimit { retry_after_secs: u64 },
    /// Wait this long, then answer normally.
    Latency(Duration),
    /// Close the connection without any response.
    Drop,
    /// Answer 200 with a body that is not JSON.
    MalformedJson,
}

impl Fault {
    /// Short description for request records and logs.
    pub fn describe(&self) -> String {
        match self {
            Fault::Status(s) => format!("status {s}"),
            Fault::RateLimit { retry_after_secs } => format!("rate_limit {retry_after_secs}s"),
            Fault::Latency(d) => format!("latency {}ms", d.as_millis()),
            Fault::Drop => "drop".into(),
            Fault::MalformedJson => "malformed_json".into(),
        }
    }

    /// Parses the admin-API form: `{"status":503}`, `{"rate_limit":{"retry_after":1}}`,
    /// `{"latency_ms":200}`, `"drop"`, `"malformed_json"`.
    pub fn from_json(v: &Value) -> Option<Fault> {
        if let Some(s) = v.as_str() {
            return match s {
                "drop" => Some(Fault::Drop),
                "malformed_json" => Some(Fault::MalformedJson),
                "rate_limit" => Some(Fault::RateLimit {
                    retry_after_secs: 1,
                }),
                _ => None,
            };
        }
        let obj = v.as_object()?;
        if obj.len() != 1 {
            return None;
        }
        if let Some(s) = obj.get("status") {
            let s = s.as_u64()?;
            return (100..=599).contains(&s).then_some(Fault::Status(s as u16));
        }
        if let Some(r) = obj.get("rate_limit") {
            let secs = match r {
                Value::Object(o) => o
                    .get("retry_after")
                    .or_else(|| o.get("retry_after_secs"))
                    .map_or(Some(1), Value::as_u64)?,
                Value::Number(n) => n.as_u64()?,
                _ => return None,
            };
            return Some(Fault::RateLimit {
                retry_after_secs: secs,
            });
        }
        if let Some(ms) = obj.get("latency_ms") {
            return Some(Fault::Latency(Duration::from_millis(ms.as_u64()?)));
        }
        None
    }

    /// The reply for faults that replace the response (`None` for `Latency`).
    pub(crate) fn reply(&self) -> Option<Reply> {
        let resp = match self {
            Fault::Latency(_) => return None,
            Fault::Drop => return Some(Reply::Drop),
            Fault::Status(status) => {
                let error = match status {
                    429 => "too_many_requests",
                    503 => "temporarily_unavailable",
                    500..=599 => "server_error",
                    _ => "injected_fault",
                };
                Response::json(
                    *status,
                    &json!({"error": error, "error_description": format!("injected fault: status {status}")}),
                )
            }
            Fault::RateLimit { retry_after_secs } => Response::json(
                429,
                &json!({"error": "too_many_requests", "error_description": "injected fault: rate limited"}),
            )
            .with_header("Retry-After", &retry_after_secs.to_string()),
            Fault::MalformedJson => Response::new(
                200,
                "application/json",
                "<html><body>injected fault: this is not JSON {</body></html>",
            ),
        };
        Some(Reply::Send(resp))
    }
}

struct Queued {
    endpoint: Endpoint,
    fault: Fault,
    /// `None`: until cleared.
    remaining: Option<u32>,
}

/// The queue of pending faults.
#[derive(Default)]
pub(crate) struct FaultQueue {
    queue: VecDeque<Queued>,
}

impl FaultQueue {
    pub(crate) fn push(&mut self, endpoint: Endpoint, fault: Fault, times: Option<u32>) {
        if times == Some(0) {
            return;
        }
        self.queue.push_back(Queued {
            endpoint,
            fault,
            remaining: times,
        });
    }

    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }

    /// Takes the oldest fault that applies to `endpoint`, consuming one use of it.
    pub(crate) fn take(&mut self, endpoint: Endpoint) -> Option<Fault> {
        let i = self
            .queue
            .iter()
            .position(|q| q.endpoint == Endpoint::Any || q.endpoint == endpoint)?;
        let q = &mut self.queue[i];
        let fault = q.fault.clone();
        if let Some(n) = q.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.queue.remove(i);
            }
        }
        Some(fault)
    }
}
