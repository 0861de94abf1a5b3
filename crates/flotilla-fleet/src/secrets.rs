//! A session's granted secrets: issued against the vault at creation
//! (`SecretsGranted`), and at each start turned into the egress proxy's
//! hook (the vault's `Injector`), the sandbox's placeholder environment,
//! and the redaction every event passes before it is stored.

use std::sync::Arc;

use flotilla_agent::tools::SessionNetwork;
use flotilla_agent::EventFilter;
use flotilla_protocol::{EventKind, SecretGrant, SessionId};
use flotilla_store::Store;
use flotilla_vault::grant::{self, GrantRequest};
use flotilla_vault::inject::{Granted, Injector};
use flotilla_vault::redact::Redactor;
use flotilla_vault::store::Vault;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks each `--grant` against the vault and issues the grants (with
/// fresh placeholders). Every problem is a message for the user.
pub(crate) fn issue(vault: &Vault, specs: &[String]) -> Result<Vec<SecretGrant>, String> {
    let now = now_ms();
    let mut out: Vec<SecretGrant> = Vec::new();
    for raw in specs {
        let req: GrantRequest = raw.parse().map_err(|e| format!("--grant {raw:?}: {e}"))?;
        if out.iter().any(|g| g.secret == req.secret) {
            return Err(format!(
                "--grant {raw:?}: secret {:?} is granted twice; give it once with all its hosts",
                req.secret
            ));
        }
        let Some((spec, _value)) = vault.get(&req.secret).map_err(|e| e.to_string())? else {
            let known: Vec<String> = vault
                .list()
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|i| i.spec.name)
                .collect();
            return Err(format!(
                "--grant {raw:?}: no secret named {:?} in the vault (it has: {}); add it with `flotilla secrets add {}`",
                req.secret,
                if known.is_empty() { "none".to_owned() } else { known.join(", ") },
                req.secret
            ));
        };
        out.push(grant::issue(&spec, &req, now).map_err(|e| format!("--grant {raw:?}: {e}"))?);
    }
    Ok(out)
}

/// Secret uses waiting to be appended, per session.
const USE_QUEUE: usize = 4096;

/// What a running session with grants uses.
pub(crate) struct SessionSecrets {
    /// The proxy hook and the placeholder environment.
    pub network: SessionNetwork,
    /// Applied to every event of the loop before it is stored.
    pub redact: Arc<dyn EventFilter>,
}

/// Builds the hook, environment and redaction of a session's grants. A
/// secret removed from the vault since is left out (its placeholder then
/// reaches nobody); each use and blocked use is appended as `SecretUsed`.
pub(crate) fn for_session(
    vault: &Arc<Vault>,
    store: &Store,
    session: &SessionId,
    grants: &[SecretGrant],
) -> SessionSecrets {
    let mut granted = Vec::new();
    for g in grants {
        match vault.get(&g.secret) {
            Ok(Some((spec, value))) => granted.push(Granted {
                grant: g.clone(),
                spec,
                value,
            }),
            Ok(None) => {
                tracing::warn!(session = %session, secret = %g.secret, "a granted secret is no longer in the vault; the session cannot use it")
            }
            Err(e) => {
                tracing::error!(session = %session, secret = %g.secret, error = %e, "cannot read a granted secret")
            }
        }
    }
    let redactor = Redactor::new(
        &granted
            .iter()
            .map(|g| (g.grant.secret.clone(), g.value.as_bytes().to_vec()))
            .collect::<Vec<_>>(),
    );
    // Uses are recorded in order by one task per session; the proxy's
    // callback must not block.
    // Bounded: a sandbox looping on refused requests must not grow the
    // daemon's memory; uses beyond the queue are counted and logged.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<flotilla_protocol::SecretUse>(USE_QUEUE);
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (store, sid, v) = (store.clone(), session.clone(), vault.clone());
    tokio::spawn(async move {
        while let Some(record) = rx.recv().await {
            if record.allowed {
                let (v, name, ts) = (v.clone(), record.secret.clone(), record.ts_ms);
                let _ = tokio::task::spawn_blocking(move || {
                    if let Err(e) = v.record_use(&name, ts) {
                        tracing::warn!(secret = %name, error = %e, "cannot record a secret's last use");
                    }
                })
                .await;
            }
            if let Err(e) = store
                .append_one(&sid, EventKind::SecretUsed { record })
                .await
            {
                tracing::error!(session = %sid, error = %e, "cannot record a secret use");
            }
        }
    });
    let sid = session.clone();
    let observer = Arc::new(move |record: flotilla_protocol::SecretUse| {
        if tx.try_send(record).is_err() {
            let n = dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(session = %sid, dropped = n, "secret uses arrive faster than they can be recorded; some are not");
            }
        }
    });
    let injector = Arc::new(Injector::new(granted, observer));
    SessionSecrets {
        network: SessionNetwork {
            hook: Some(injector),
            env: grant::sandbox_env(grants),
        },
        redact: Arc::new(RedactEvents(redactor)),
    }
}

/// Every string of an event (and every key) with granted values replaced by
/// `[secret:NAME]`.
struct RedactEvents(Redactor);

impl EventFilter for RedactEvents {
    fn filter(&self, event: &mut EventKind) {
        if self.0.is_empty() {
            return;
        }
        let Ok(mut value) = serde_json::to_value(&*event) else {
            // Cannot look inside: do not store what might hold a value.
            *event = withheld();
            return;
        };
        // The tag names the event kind; it is never a value to redact.
        let tag = value.as_object_mut().and_then(|o| o.remove("type"));
        let changed = self.0.redact_json(&mut value);
        if let (Some(tag), Some(o)) = (tag, value.as_object_mut()) {
            o.insert("type".to_owned(), tag);
        }
        if changed {
            match serde_json::from_value(value) {
                Ok(clean) => *event = clean,
                Err(e) => {
                    // A redaction that breaks the event's shape (a value in
                    // a tag) must not store the value: store a note instead.
                    tracing::error!(error = %e, "a redacted event no longer parses");
                    *event = withheld();
                }
            }
        }
    }
}

/// What is stored instead of an event that could not be redacted.
fn withheld() -> EventKind {
    EventKind::ToolFinished {
        call_id: String::new(),
        output: "[event withheld: it may contain a granted secret]".into(),
        is_error: true,
        duration_ms: 0,
    }
}
