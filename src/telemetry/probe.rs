//! Asking the log filter, once at start-up, about what taskgate writes without `tracing`: the
//! access event and the request span's fields. Each question is a callsite of its own, put to
//! the filter as `tracing` would when the real callsite is first hit; the filter is fixed for
//! the life of the process, so the answer holds.

use tracing::{
    callsite::{Callsite, Identifier},
    field::FieldSet,
    metadata::Kind,
    subscriber::Interest,
    Level, Metadata,
};
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::{access, request};

/// What the filter says.
pub(super) struct Verdicts {
    /// About the access event.
    pub access: Interest,
    /// About the request span.
    pub span: Interest,
    /// Whether the filter may hold a directive on spans (`[request{id=…}]=debug`): it gives
    /// events "sometimes", decided per event by the spans it is in.
    pub dynamic: bool,
}

pub(super) fn ask(filter: &EnvFilter) -> Verdicts {
    let ask = |meta: &'static Metadata<'static>| {
        <EnvFilter as Layer<Registry>>::register_callsite(filter, meta)
    };
    // A level no static directive enables for this target unless it enables everything
    // (`trace`): "never" then proves that there is no directive on spans.
    let unheard = ask(&UNHEARD_META);
    Verdicts {
        access: ask(&ACCESS_META),
        span: ask(&SPAN_META),
        dynamic: !unheard.is_never(),
    }
}

/// A callsite that is only ever asked about.
struct Probe(&'static Metadata<'static>);

impl Callsite for Probe {
    fn set_interest(&self, _: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        self.0
    }
}

macro_rules! probe {
    ($meta:ident, $callsite:ident, $name:expr, $target:expr, $level:expr, $kind:expr) => {
        static $callsite: Probe = Probe(&$meta);
        static $meta: Metadata<'static> = Metadata::new(
            $name,
            $target,
            $level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&$callsite)),
            $kind,
        );
    };
}

probe!(
    ACCESS_META,
    ACCESS,
    "request",
    access::TARGET,
    Level::INFO,
    Kind::EVENT
);
probe!(
    SPAN_META,
    SPAN,
    request::SPAN_NAME,
    request::SPAN_TARGET,
    Level::INFO,
    Kind::SPAN
);
probe!(
    UNHEARD_META,
    UNHEARD,
    "probe",
    "taskgate::probe",
    Level::TRACE,
    Kind::EVENT
);

#[cfg(test)]
mod tests {
    use super::*;

    /// (access, span, dynamic), each interest as always / never / sometimes.
    fn verdicts(filter: &str) -> (&'static str, &'static str, bool) {
        let word = |i: &Interest| match (i.is_always(), i.is_never()) {
            (true, _) => "always",
            (_, true) => "never",
            _ => "sometimes",
        };
        let v = ask(&EnvFilter::new(filter));
        (word(&v.access), word(&v.span), v.dynamic)
    }

    #[test]
    fn the_filter_is_asked_about_the_access_event_and_the_request_span() {
        assert_eq!(verdicts("info"), ("always", "always", false));
        assert_eq!(verdicts("debug"), ("always", "always", false));
        assert_eq!(verdicts("trace"), ("always", "always", true));
        assert_eq!(verdicts("warn"), ("never", "never", false));
        assert_eq!(verdicts("off"), ("never", "never", false));
        assert_eq!(
            verdicts("warn,taskgate::access=info"),
            ("always", "never", false)
        );
        assert_eq!(
            verdicts("info,taskgate::access=off"),
            ("never", "always", false)
        );
        assert_eq!(
            verdicts("info,taskgate::proxy=warn"),
            ("always", "never", false)
        );
        assert_eq!(
            verdicts("warn,[request{id=done-1}]=info"),
            ("sometimes", "sometimes", true)
        );
        assert!(verdicts("info,[request{id=done-1}]=debug").2);
    }
}
