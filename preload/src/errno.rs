//! Errno names for messages: the table lives in `pmig_abi::errno` (the restore engine, which
//! has no libc, names errnos too).

pub use pmig_abi::errno::*;

#[cfg(test)]
mod tests {
    use super::*;
    use pmig_abi::errno::TABLE;

    #[test]
    fn every_entry_has_its_own_number() {
        for (i, (n, d)) in TABLE.iter().enumerate() {
            let gap = matches!(i + 1, 41 | 58);
            assert!(gap || (n.starts_with('E') && !d.is_empty()), "entry {}: {n} {d}", i + 1);
            assert_eq!(name(i as i32 + 1).is_none(), gap);
        }
        // Spot checks against libc's constants.
        for (e, n) in [
            (libc::EPERM, "EPERM"),
            (libc::EAGAIN, "EAGAIN"),
            (libc::ENOSPC, "ENOSPC"),
            (libc::EADDRINUSE, "EADDRINUSE"),
            (libc::ECONNREFUSED, "ECONNREFUSED"),
            (libc::EOPNOTSUPP, "EOPNOTSUPP"),
            (libc::EHWPOISON, "EHWPOISON"),
        ] {
            assert_eq!(name(e), Some(n));
        }
        assert_eq!(TABLE.len(), libc::EHWPOISON as usize);
    }

    #[test]
    fn messages_name_the_errno() {
        assert_eq!(Errno(libc::ENOSPC).to_string(), "ENOSPC (no space left on device)");
        assert_eq!(Errno(libc::EADDRINUSE).to_string(), "EADDRINUSE (address already in use)");
        assert_eq!(Errno(libc::EIO).to_string(), "EIO (input/output error)");
        assert_eq!(Errno(0).to_string(), "errno 0");
        assert_eq!(Errno(-3).to_string(), "errno -3");
        assert_eq!(Errno(4242).to_string(), "errno 4242");
        assert_eq!(description(libc::ENOENT), Some("no such file or directory"));
    }
}
