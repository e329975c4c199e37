//! The Azure Functions host side (SPEC §2): the port it gives us, and the timer
//! trigger's invocation payload and answer.

use serde::Deserialize;
use serde_json::{Value, json};

/// Set by the host when it starts the handler as a custom handler.
pub const PORT_VAR: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";

/// The host's timer invocation. Only what we read is declared; unknown fields are
/// ignored and every field may be missing or null (`ScheduleStatus` is null on a
/// timer's first run).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct TimerInvocation {
    pub data: Option<TimerData>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TimerData {
    pub timer: Option<TimerInfo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct TimerInfo {
    pub schedule_status: Option<ScheduleStatus>,
    pub is_past_due: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ScheduleStatus {
    pub last: Option<String>,
    pub next: Option<String>,
}

impl TimerInvocation {
    pub fn is_past_due(&self) -> bool {
        self.data
            .as_ref()
            .and_then(|d| d.timer.as_ref())
            .and_then(|t| t.is_past_due)
            .unwrap_or(false)
    }
}

/// The answer the host expects from a function invocation, with `log` as its one
/// log line.
pub fn invocation_answer(log: String) -> Value {
    json!({"Outputs": {}, "Logs": [log], "ReturnValue": null})
}
