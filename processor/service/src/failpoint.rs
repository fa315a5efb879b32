//! Fault injection for the crash and Byzantine tests, compiled only with the
//! cargo feature `failpoints` (off by default, so release builds carry none).
//!
//! Failpoints are configured through the `FAILPOINTS` environment variable
//! (`name=action;...`, the `fail` crate's syntax). Without the feature,
//! [`eval`] is a constant `None` the compiler removes, the `fail` crate is
//! not linked at all, and a processor started with `FAILPOINTS` set refuses
//! to start ([`check_environment`]): a test that injects faults into a build
//! that cannot must fail loudly, not pass without its fault.

/// The environment variable that configures failpoints.
pub const ENV: &str = "FAILPOINTS";

/// Whether this build can inject faults (the `failpoints` feature).
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Evaluates the failpoint `name`: `Some(f(argument))` when it is configured
/// to fire, `None` otherwise (always `None` without the feature).
#[cfg(feature = "failpoints")]
#[inline]
pub fn eval<R>(name: &str, f: impl FnOnce(Option<String>) -> R) -> Option<R> {
    fail::eval(name, f)
}

/// Evaluates the failpoint `name`: without the `failpoints` feature, never
/// fires.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn eval<R>(_name: &str, _f: impl FnOnce(Option<String>) -> R) -> Option<R> {
    None
}

/// `FAILPOINTS` set in a build without the feature.
#[derive(Debug, thiserror::Error)]
#[error(
    "FAILPOINTS is set ({value:?}) but this processor was built without the `failpoints` \
     feature, so no fault can be injected: unset FAILPOINTS, or, for tests, build with \
     `--features processor/failpoints`"
)]
pub struct CompiledOut {
    value: String,
}

/// Refuses `FAILPOINTS` when this build cannot honour it.
pub fn check_environment() -> Result<(), CompiledOut> {
    match std::env::var_os(ENV) {
        Some(value) if !ENABLED => Err(CompiledOut {
            value: value.to_string_lossy().into_owned(),
        }),
        _ => Ok(()),
    }
}

/// Configures the failpoints `FAILPOINTS` names, for as long as the returned
/// guard lives; `None` when it is unset (or the feature is off).
#[cfg(feature = "failpoints")]
pub fn setup() -> Option<fail::FailScenario<'static>> {
    std::env::var_os(ENV).map(|v| {
        tracing::warn!(
            failpoints = ?v,
            "fault injection is ON (FAILPOINTS is set); never do this in production"
        );
        fail::FailScenario::setup()
    })
}

/// Without the `failpoints` feature there is nothing to configure.
#[cfg(not(feature = "failpoints"))]
pub fn setup() -> Option<()> {
    None
}

#[cfg(test)]
mod tests {
    /// A default build (what `cargo build --release` makes) has no fault
    /// injection: the `fail` crate is not even linked. CI runs this in a
    /// build without the feature (`.ci/run`), so turning the feature on by
    /// default fails it.
    #[cfg(not(feature = "failpoints"))]
    #[test]
    fn a_build_without_the_feature_never_fires() {
        const { assert!(!super::ENABLED) };
        assert!(super::eval("scheduler-extra-payment", |a| a).is_none());
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn a_build_with_the_feature_fires_when_configured() {
        assert!(fail::has_failpoints());
        let _guard = fail::FailGuard::new("failpoint-self-test", "return(x)")
            .expect("a valid failpoint action");
        assert_eq!(
            super::eval("failpoint-self-test", |a| a),
            Some(Some("x".to_owned()))
        );
    }
}
