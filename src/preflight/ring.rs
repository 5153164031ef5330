//! io_uring: whether this kernel, its `kernel.io_uring_disabled` sysctl and
//! any seccomp filter let the gateway create rings at all. Without them no
//! glommio executor starts.

use super::{Check, Readings, RingProbe, Status};

/// Whether the gateway's shards can get their io_uring rings.
pub fn check(r: &Readings) -> Check {
    let sysctl = r.io_uring_disabled;
    let now = format!(
        "io_uring_disabled={}, {}",
        sysctl.map_or("absent".into(), |v| v.to_string()),
        match r.ring_probe {
            RingProbe::Created => "ring created".to_string(),
            RingProbe::Failed { errno } => format!("ring refused: {}", errno_text(errno)),
        }
    );
    let enable = "sysctl -w kernel.io_uring_disabled=0";
    let in_group = "or run the service in kernel.io_uring_group";
    let (status, fix) = match (r.ring_probe, sysctl) {
        (_, Some(2)) => (Status::Blocking, Some(enable.to_string())),
        (RingProbe::Created, Some(1)) => (
            // This process may (privileged or in the group); the service user may not.
            Status::Advisory,
            Some(format!("{enable}, {in_group}")),
        ),
        (RingProbe::Created, _) => (Status::Ok, None),
        (RingProbe::Failed { errno }, _) if errno == libc::ENOSYS => (
            Status::Blocking,
            Some("a kernel built with io_uring (5.8 or later)".into()),
        ),
        (RingProbe::Failed { errno }, Some(1)) if errno == libc::EPERM => {
            (Status::Blocking, Some(format!("{enable}, {in_group}")))
        }
        (RingProbe::Failed { errno }, _) if errno == libc::EPERM => (
            Status::Blocking,
            Some(
                "allow io_uring_setup, io_uring_enter, io_uring_register in the seccomp profile"
                    .into(),
            ),
        ),
        (RingProbe::Failed { errno }, _) => (
            Status::Blocking,
            Some(format!(
                "io_uring_setup failed with {}: see dmesg",
                errno_text(errno)
            )),
        ),
    };
    Check {
        setting: "io_uring",
        now,
        recommended: "rings allowed".into(),
        status,
        fix,
        why: "every gateway shard is a glommio executor on three io_uring rings".into(),
    }
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

#[cfg(test)]
mod tests {
    use super::super::tests::roomy;
    use super::*;

    #[test]
    fn io_uring_off_or_refused_blocks() {
        let mut h = roomy();
        h.io_uring_disabled = Some(2);
        let c = check(&h);
        assert_eq!(c.status, Status::Blocking);
        assert_eq!(
            c.fix.as_deref(),
            Some("sysctl -w kernel.io_uring_disabled=0")
        );

        h.io_uring_disabled = Some(1);
        h.ring_probe = RingProbe::Failed { errno: libc::EPERM };
        let c = check(&h);
        assert_eq!(c.status, Status::Blocking);
        assert!(c.fix.unwrap().contains("io_uring_group"));

        h.io_uring_disabled = None;
        assert!(check(&h).fix.unwrap().contains("seccomp"));

        h.ring_probe = RingProbe::Failed {
            errno: libc::ENOSYS,
        };
        assert_eq!(check(&h).status, Status::Blocking);
    }

    #[test]
    fn a_ring_this_process_may_create_is_ok_unless_the_service_may_not() {
        let mut h = roomy();
        h.ring_probe = RingProbe::Created;
        h.io_uring_disabled = Some(0);
        assert_eq!(check(&h).status, Status::Ok);
        h.io_uring_disabled = None;
        assert_eq!(check(&h).status, Status::Ok, "kernels before 6.6");
        // Privileged or in the group here; the service user may be neither.
        h.io_uring_disabled = Some(1);
        assert_eq!(check(&h).status, Status::Advisory);
    }
}
