//! The Azure Functions host side: the port it gives us and the timer trigger's
//! invocation payload and answer (SPEC §2).

use crate::AppState;
use crate::api::{ApiError, MAX_BODY};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// Set by the host when it starts the handler as a custom handler.
pub const PORT_VAR: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";

/// The host's timer invocation. Only what we read is declared; unknown fields are
/// ignored and every field may be missing or null (`ScheduleStatus` is null on a
/// timer's first run).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct TimerInvocation {
    pub data: Option<TimerData>,
    pub metadata: Option<serde_json::Value>,
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

/// `POST /timer-refresh`: one sweep, answered in the host's invocation format.
pub async fn timer_refresh(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload too large",
                format!("The invocation payload must be under {MAX_BODY} bytes"),
            )
            .into_response();
        }
    };
    let invocation: TimerInvocation = match serde_json::from_slice(&body) {
        Ok(invocation) => invocation,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "Invalid invocation",
                format!("The body must be the host's JSON invocation payload ({e})"),
            )
            .into_response();
        }
    };
    let past_due = invocation
        .data
        .and_then(|d| d.timer)
        .and_then(|t| t.is_past_due)
        .unwrap_or(false);
    match app.refresher.sweep().await {
        Ok(summary) => {
            let line = summary.line();
            tracing::info!(past_due, "{line}");
            Json(json!({"Outputs": {}, "Logs": [line], "ReturnValue": null})).into_response()
        }
        Err(error) => {
            // Non-2xx fails the invocation: the host records it and the next tick retries.
            tracing::error!(%error, "sweep could not run");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "Outputs": {},
                    "Logs": [format!("sweep could not run: {error}")],
                    "ReturnValue": null,
                    "error": "Token store unavailable",
                    "message": "The sweep could not read the token store",
                })),
            )
                .into_response()
        }
    }
}
