//! (c) Resident memory of the daemon holding many idle sessions.
//!
//! The real `flotilla serve` runs against a mock model server (in this
//! process) that never answers: every session, once created through the API,
//! sits in a model request with its loop, its HTTP connection and its
//! conversation in memory. The figure is the daemon's `VmRSS` once all
//! sessions are there; the baseline is its `VmRSS` with no session, measured
//! a moment after start in the same run.

use std::time::Duration;

use anyhow::Result;

use crate::daemon::IdleFleet;
use crate::report::{Figure, Goal, Target};

/// Measures the fleet's daemon (already filled by [`crate::daemon::idle_fleet`]).
pub async fn measure(fleet: &mut IdleFleet) -> Result<Figure> {
    // Let the last connections and tasks settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.daemon.check_alive()?;
    let rss = fleet.daemon.rss_kib()?;
    let hwm = crate::daemon::proc_status_number(fleet.daemon.pid(), "VmHWM")?;
    let n = fleet.sessions.len();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut fig = Figure::new(
        "idle_rss",
        format!("(c) daemon RSS, {n} idle sessions"),
        Target {
            goal: Goal::Below,
            value: 100.0,
            unit: "MiB",
        },
        mib(rss),
        "daemon with 0 sessions",
        mib(fleet.empty_rss_kib),
    );
    fig.detail("sessions", n)
        .detail(
            "per_session_kib",
            (rss.saturating_sub(fleet.empty_rss_kib)) as f64 / n.max(1) as f64,
        )
        .detail("peak_rss_mib", mib(hwm))
        .detail("create_all_s", fleet.create_time.as_secs_f64())
        .detail(
            "create_to_all_waiting_on_model_s",
            fleet.settle_time.as_secs_f64(),
        )
        .detail("model_requests_pending", fleet.mock.request_count());
    if let Ok(breakdown) = crate::daemon::rss_breakdown(fleet.daemon.pid()) {
        fig.detail("rss_breakdown", breakdown);
    }
    if let Ok(threads) = crate::daemon::proc_status_number(fleet.daemon.pid(), "Threads") {
        fig.detail("daemon_threads", threads);
    }
    if let Some(fds) = fleet.daemon.open_fds() {
        fig.detail("daemon_open_fds", fds);
    }
    if let Some(limit) = fleet.daemon.nofile_soft_limit() {
        fig.detail("daemon_nofile_soft_limit", limit);
    }
    let emfile = fleet.daemon.emfile_lines();
    fig.detail("daemon_emfile_log_lines", emfile.len());
    if !emfile.is_empty() {
        fig.fail_because(format!(
            "the daemon ran out of file descriptors: {}",
            emfile[0]
        ));
    }
    Ok(fig)
}
