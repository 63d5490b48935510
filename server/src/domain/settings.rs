//! The cluster's replicated settings as an operator names them: parsing
//! and checking one `name value` change before it is proposed.

use agora_proto::auth::KsfParams;

/// Most Argon2id memory an operator may set, KiB (1 GiB). The peer client
/// refuses anything above the same bound (`MAX_KSF_MEMORY_KIB`), so a
/// larger value would lock every new registration out.
pub const MAX_KSF_MEMORY_KIB: u32 = 1 << 20;
/// Most Argon2id iterations (the peer client's bound too).
pub const MAX_KSF_ITERATIONS: u32 = 64;
/// Most Argon2id lanes.
pub const MAX_KSF_PARALLELISM: u32 = 16;

/// The settings an operator can change, by their wire names.
pub const NAMES: [&str; 6] = [
    "commission_bps",
    "hold_ttl_ms",
    "dispute_window_ms",
    "argon2_memory_kib",
    "argon2_iterations",
    "argon2_parallelism",
];

/// One checked change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingChange {
    /// Commission in basis points.
    CommissionBps(u32),
    /// How long a purchase holds the buyer's money, ms (0 = each node's
    /// own default).
    HoldTtlMs(u64),
    /// How long sale proceeds stay open to disputes, ms.
    DisputeWindowMs(u64),
    /// New Argon2id parameters (for new registrations).
    Ksf(KsfParams),
}

/// Parses `name = value` against the current Argon2id parameters (one of
/// them changes at a time; the others stay). `max_hold_ttl_ms`,
/// `max_dispute_window_ms` and `max_bps` are the limits the commands
/// enforce.
///
/// # Errors
/// A sentence saying what is wrong and what is allowed.
pub fn parse_change(
    name: &str,
    value: &str,
    current_ksf: KsfParams,
    limits: Limits,
) -> Result<SettingChange, String> {
    let number = || -> Result<u64, String> {
        value.trim().parse::<u64>().map_err(|e| match e.kind() {
            std::num::IntErrorKind::PosOverflow => {
                format!("{name} is far too large: {value} is beyond any limit a setting has")
            }
            _ => format!("{name} takes a whole number (digits only); {value:?} is not one"),
        })
    };
    let small = |max: u32| -> Result<u32, String> {
        let n = number()?;
        u32::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("{name} is at most {max}; {n} is too large"))
    };
    let ksf = |k: KsfParams| check_ksf(k).map(|()| SettingChange::Ksf(k));
    match name {
        "commission_bps" => Ok(SettingChange::CommissionBps(small(limits.max_bps)?)),
        "hold_ttl_ms" => {
            let ms = number()?;
            if ms > limits.max_hold_ttl_ms {
                return Err(format!(
                    "hold_ttl_ms is at most {} ({} hours); 0 lets each node's --purchase-hold-ms apply",
                    limits.max_hold_ttl_ms,
                    limits.max_hold_ttl_ms / 3_600_000
                ));
            }
            Ok(SettingChange::HoldTtlMs(ms))
        }
        "dispute_window_ms" => {
            let ms = number()?;
            if ms > limits.max_dispute_window_ms {
                return Err(format!(
                    "dispute_window_ms is at most {} ({} days)",
                    limits.max_dispute_window_ms,
                    limits.max_dispute_window_ms / 86_400_000
                ));
            }
            Ok(SettingChange::DisputeWindowMs(ms))
        }
        "argon2_memory_kib" => ksf(KsfParams {
            memory_kib: small(MAX_KSF_MEMORY_KIB)?,
            ..current_ksf
        }),
        "argon2_iterations" => ksf(KsfParams {
            iterations: small(MAX_KSF_ITERATIONS)?,
            ..current_ksf
        }),
        "argon2_parallelism" => ksf(KsfParams {
            parallelism: small(MAX_KSF_PARALLELISM)?,
            ..current_ksf
        }),
        other => Err(format!(
            "there is no setting {other:?}; the settings are {}",
            NAMES.join(", ")
        )),
    }
}

/// Checks Argon2id parameters against argon2's rules and the peer
/// client's bounds.
///
/// # Errors
/// A sentence saying which value is out of range.
pub fn check_ksf(k: KsfParams) -> Result<(), String> {
    if k.iterations == 0 || k.iterations > MAX_KSF_ITERATIONS {
        return Err(format!(
            "argon2_iterations is 1 to {MAX_KSF_ITERATIONS}; {} is not",
            k.iterations
        ));
    }
    if k.parallelism == 0 || k.parallelism > MAX_KSF_PARALLELISM {
        return Err(format!(
            "argon2_parallelism is 1 to {MAX_KSF_PARALLELISM}; {} is not",
            k.parallelism
        ));
    }
    if k.memory_kib > MAX_KSF_MEMORY_KIB {
        return Err(format!(
            "argon2_memory_kib is at most {MAX_KSF_MEMORY_KIB}; {} is too large",
            k.memory_kib
        ));
    }
    if k.memory_kib < 8 * k.parallelism {
        return Err(format!(
            "argon2_memory_kib must be at least 8 KiB per lane ({} with {} lane(s))",
            8 * k.parallelism,
            k.parallelism
        ));
    }
    k.argon2()
        .map(|_| ())
        .map_err(|e| format!("argon2 refuses these parameters: {e}"))
}

/// The bounds the replicated commands enforce, passed in so this module
/// stays free of storage.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most commission, basis points.
    pub max_bps: u32,
    /// Longest purchase hold, ms.
    pub max_hold_ttl_ms: u64,
    /// Longest dispute window, ms.
    pub max_dispute_window_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bps: 10_000,
        max_hold_ttl_ms: 86_400_000,
        max_dispute_window_ms: 90 * 86_400_000,
    };

    fn parse(name: &str, value: &str) -> Result<SettingChange, String> {
        parse_change(name, value, KsfParams::OWASP, LIMITS)
    }

    #[test]
    fn each_name_parses() {
        assert_eq!(
            parse("commission_bps", "250"),
            Ok(SettingChange::CommissionBps(250))
        );
        assert_eq!(
            parse("hold_ttl_ms", "60000"),
            Ok(SettingChange::HoldTtlMs(60_000))
        );
        assert_eq!(
            parse("dispute_window_ms", "0"),
            Ok(SettingChange::DisputeWindowMs(0))
        );
        assert_eq!(
            parse("argon2_iterations", "3"),
            Ok(SettingChange::Ksf(KsfParams {
                iterations: 3,
                ..KsfParams::OWASP
            }))
        );
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        assert!(parse("commission_bps", "10001").is_err_and(|e| e.contains("at most 10000")));
        assert!(parse("commission_bps", "-1").is_err_and(|e| e.contains("whole number")));
        assert!(parse("hold_ttl_ms", "86400001").is_err_and(|e| e.contains("24 hours")));
        assert!(parse("argon2_iterations", "0").is_err_and(|e| e.contains("1 to 64")));
        assert!(parse("argon2_memory_kib", "4").is_err_and(|e| e.contains("8 KiB")));
        assert!(parse("argon2_memory_kib", "2000000").is_err_and(|e| e.contains("at most")));
        assert!(parse("colour", "1").is_err_and(|e| e.contains("commission_bps")));
        assert!(parse("dispute_window_ms", "99999999999999999999999")
            .is_err_and(|e| e.contains("too large") && !e.contains("digits only")));
    }
}
