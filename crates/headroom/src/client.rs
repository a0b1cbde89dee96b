//! The admin subcommands: small HTTP calls to a running server, shown as
//! readable tables (or the server's JSON with `--json`).

use serde_json::{Value, json};

/// Where and as whom to call.
pub struct Client {
    pub server: String,
    pub token: Option<String>,
    pub json: bool,
}

/// Why a call failed: the server said no (exit 1), or it could not be reached (exit 2).
#[derive(Debug)]
pub enum ClientError {
    Refused(String),
    Unreachable(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Refused(message) | ClientError::Unreachable(message) => f.write_str(message),
        }
    }
}

impl Client {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let authorization = self.token.as_ref().map(|token| format!("Bearer {token}"));
        let unreachable = |error: ureq::Error| ClientError::Unreachable(format!("cannot reach {url}: {error}"));
        let mut response = match (method, body) {
            ("GET", _) => {
                let request = agent.get(&url);
                let request = match &authorization {
                    Some(value) => request.header("authorization", value),
                    None => request,
                };
                request.call().map_err(unreachable)?
            }
            (_, body) => {
                let request = match method {
                    "PUT" => agent.put(&url),
                    _ => agent.post(&url),
                };
                let request = match &authorization {
                    Some(value) => request.header("authorization", value),
                    None => request,
                };
                request.send_json(body.unwrap_or(Value::Null)).map_err(unreachable)?
            }
        };
        let status = response.status();
        let text = response.body_mut().read_to_string().map_err(unreachable)?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            let message = value["error"]["message"].as_str().map_or_else(|| value.to_string(), str::to_string);
            Err(ClientError::Refused(format!(
                "{} {}: {message}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )))
        }
    }

    fn show(&self, value: &Value, table: impl FnOnce(&Value) -> String) -> String {
        if self.json { serde_json::to_string_pretty(value).expect("JSON values serialize") } else { table(value) }
    }

    pub fn put_account(&self, account: &str, plan: &str, overdraft: Option<&str>) -> Result<String, ClientError> {
        let mut body = json!({ "plan": plan });
        if let Some(overdraft) = overdraft {
            body["overdraft"] = json!(parse_credits(overdraft).map_err(ClientError::Refused)?);
        }
        let value = self.call("PUT", &format!("/v1/accounts/{account}"), Some(body))?;
        Ok(self.show(&value, account_table))
    }

    pub fn get_account(&self, account: &str) -> Result<String, ClientError> {
        let value = self.call("GET", &format!("/v1/accounts/{account}"), None)?;
        Ok(self.show(&value, account_table))
    }

    pub fn put_subject(&self, subject: &str, account: &str, plan: Option<&str>) -> Result<String, ClientError> {
        let value =
            self.call("PUT", &format!("/v1/subjects/{subject}"), Some(json!({ "account": account, "plan": plan })))?;
        Ok(self.show(&value, |value| {
            table(&["SUBJECT", "ACCOUNT"], &[vec![text(&value["subject"]), text(&value["account"])]])
        }))
    }

    pub fn add_grant(&self, account: &str, grant: &GrantArguments) -> Result<String, ClientError> {
        let body = json!({
            "kind": grant.kind,
            "credits": parse_credits(&grant.credits).map_err(ClientError::Refused)?,
            "priority": grant.priority,
            "expires_at": grant.expires_at,
            "idempotency_key": grant.idempotency_key,
        });
        let value = self.call("POST", &format!("/v1/accounts/{account}/grants"), Some(body))?;
        Ok(self.show(&value, |value| {
            table(
                &["GRANT", "KIND", "CREDITS", "EXPIRES AT", "BALANCE"],
                &[vec![
                    text(&value["grant"]),
                    text(&value["kind"]),
                    credits(&value["credits"]),
                    text(&value["expires_at"]),
                    credits(&value["balance"]),
                ]],
            )
        }))
    }

    pub fn usage(&self, subject: &str) -> Result<String, ClientError> {
        let value = self.call("GET", &format!("/v1/subjects/{subject}/usage"), None)?;
        Ok(self.show(&value, |value| {
            let windows: Vec<Vec<String>> = value["windows"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|window| {
                    vec![
                        text(&window["window"]),
                        text(&window["scope"]),
                        text(&window["limit"]),
                        text(&window["used"]),
                        text(&window["remaining"]),
                        text(&window["resets_at"]),
                    ]
                })
                .collect();
            let grants: Vec<Vec<String>> = value["grants"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|grant| {
                    vec![
                        text(&grant["id"]),
                        text(&grant["kind"]),
                        credits(&grant["remaining"]),
                        text(&grant["expires_at"]),
                    ]
                })
                .collect();
            format!(
                "subject {} in account {}\n\n{}\nbalance {} credits\n\n{}",
                text(&value["subject"]),
                text(&value["account"]),
                table(&["WINDOW", "SCOPE", "LIMIT", "USED", "REMAINING", "RESETS AT"], &windows),
                credits(&value["balance"]),
                table(&["GRANT", "KIND", "REMAINING", "EXPIRES AT"], &grants),
            )
        }))
    }

    pub fn create_token(
        &self,
        kind: &str,
        subject: Option<&str>,
        account: Option<&str>,
    ) -> Result<String, ClientError> {
        let value =
            self.call("POST", "/v1/tokens", Some(json!({ "kind": kind, "subject": subject, "account": account })))?;
        Ok(self.show(&value, |value| {
            format!(
                "{}\ntoken (shown once): {}\n",
                table(
                    &["ID", "KIND", "SUBJECT", "ACCOUNT"],
                    &[vec![text(&value["id"]), text(&value["kind"]), text(&value["subject"]), text(&value["account"])]]
                ),
                text(&value["token"])
            )
        }))
    }
}

pub struct GrantArguments {
    pub kind: String,
    /// Decimal credits: `10`, `0.25`.
    pub credits: String,
    pub priority: Option<u32>,
    pub expires_at: Option<String>,
    pub idempotency_key: String,
}

fn account_table(value: &Value) -> String {
    let subjects: Vec<String> = value["subjects"].as_array().into_iter().flatten().map(text).collect();
    table(
        &["ACCOUNT", "PLAN", "OVERDRAFT", "BALANCE", "SUBJECTS"],
        &[vec![
            text(&value["account"]),
            text(&value["plan"]),
            credits(&value["overdraft"]),
            credits(&value["balance"]),
            subjects.join(","),
        ]],
    )
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Micro-credits shown as credits: `25000000` → `25.00`.
fn credits(value: &Value) -> String {
    match value.as_u64() {
        Some(micros) => {
            let fraction = format!("{:06}", micros % 1_000_000);
            let fraction = fraction.trim_end_matches('0');
            format!("{}.{fraction:0<2}", micros / 1_000_000)
        }
        None => text(value),
    }
}

/// Decimal credits to micro-credits, exactly: `0.25` → 250000.
pub fn parse_credits(text: &str) -> Result<u64, String> {
    let invalid = || format!("{text:?} is not an amount of credits such as 10 or 0.25 (at most 6 decimals)");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || fraction.len() > 6
        || !whole.bytes().chain(fraction.bytes()).all(|byte| byte.is_ascii_digit())
    {
        return Err(invalid());
    }
    let whole: u64 = whole.parse().map_err(|_| invalid())?;
    let fraction: u64 = format!("{fraction:0<6}").parse().map_err(|_| invalid())?;
    whole.checked_mul(1_000_000).and_then(|micros| micros.checked_add(fraction)).ok_or_else(invalid)
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_parse_exactly_and_print_back() {
        assert_eq!(parse_credits("10"), Ok(10_000_000));
        assert_eq!(parse_credits("0.25"), Ok(250_000));
        assert_eq!(parse_credits("1.000001"), Ok(1_000_001));
        for bad in ["", ".5", "1.0000001", "-1", "1e3", "18446744073710"] {
            assert!(parse_credits(bad).is_err(), "{bad}");
        }
        assert_eq!(credits(&json!(25_000_000)), "25.00");
        assert_eq!(credits(&json!(80_000)), "0.08");
        assert_eq!(credits(&json!(1_000_001)), "1.000001");
    }
}
