//! Errno names for messages (libpmig's and the restore engine's): `ENOSPC (no space left on device)`, not a bare number.
//!
//! A table of our own, indexed by the errno value (Linux's numbers on x86-64, from
//! `asm-generic/errno*.h`, with glibc's descriptions): glibc's `strerror` may take the gettext
//! lock, which a thread parked by a checkpoint could hold. Allocates nothing, so it is usable
//! anywhere, with other threads stopped too.

use core::fmt;

/// `(name, description)` of errno `i + 1`; a gap in Linux's numbering is `("", "")`.
pub const TABLE: &[(&str, &str)] = &[
    ("EPERM", "operation not permitted"), // 1
    ("ENOENT", "no such file or directory"), // 2
    ("ESRCH", "no such process"), // 3
    ("EINTR", "interrupted system call"), // 4
    ("EIO", "input/output error"), // 5
    ("ENXIO", "no such device or address"), // 6
    ("E2BIG", "argument list too long"), // 7
    ("ENOEXEC", "exec format error"), // 8
    ("EBADF", "bad file descriptor"), // 9
    ("ECHILD", "no child processes"), // 10
    ("EAGAIN", "resource temporarily unavailable"), // 11
    ("ENOMEM", "cannot allocate memory"), // 12
    ("EACCES", "permission denied"), // 13
    ("EFAULT", "bad address"), // 14
    ("ENOTBLK", "block device required"), // 15
    ("EBUSY", "device or resource busy"), // 16
    ("EEXIST", "file exists"), // 17
    ("EXDEV", "invalid cross-device link"), // 18
    ("ENODEV", "no such device"), // 19
    ("ENOTDIR", "not a directory"), // 20
    ("EISDIR", "is a directory"), // 21
    ("EINVAL", "invalid argument"), // 22
    ("ENFILE", "too many open files in system"), // 23
    ("EMFILE", "too many open files"), // 24
    ("ENOTTY", "inappropriate ioctl for device"), // 25
    ("ETXTBSY", "text file busy"), // 26
    ("EFBIG", "file too large"), // 27
    ("ENOSPC", "no space left on device"), // 28
    ("ESPIPE", "illegal seek"), // 29
    ("EROFS", "read-only file system"), // 30
    ("EMLINK", "too many links"), // 31
    ("EPIPE", "broken pipe"), // 32
    ("EDOM", "numerical argument out of domain"), // 33
    ("ERANGE", "numerical result out of range"), // 34
    ("EDEADLK", "resource deadlock avoided"), // 35
    ("ENAMETOOLONG", "file name too long"), // 36
    ("ENOLCK", "no locks available"), // 37
    ("ENOSYS", "function not implemented"), // 38
    ("ENOTEMPTY", "directory not empty"), // 39
    ("ELOOP", "too many levels of symbolic links"), // 40
    ("", ""), // 41: unused
    ("ENOMSG", "no message of desired type"), // 42
    ("EIDRM", "identifier removed"), // 43
    ("ECHRNG", "channel number out of range"), // 44
    ("EL2NSYNC", "level 2 not synchronized"), // 45
    ("EL3HLT", "level 3 halted"), // 46
    ("EL3RST", "level 3 reset"), // 47
    ("ELNRNG", "link number out of range"), // 48
    ("EUNATCH", "protocol driver not attached"), // 49
    ("ENOCSI", "no CSI structure available"), // 50
    ("EL2HLT", "level 2 halted"), // 51
    ("EBADE", "invalid exchange"), // 52
    ("EBADR", "invalid request descriptor"), // 53
    ("EXFULL", "exchange full"), // 54
    ("ENOANO", "no anode"), // 55
    ("EBADRQC", "invalid request code"), // 56
    ("EBADSLT", "invalid slot"), // 57
    ("", ""), // 58: unused
    ("EBFONT", "bad font file format"), // 59
    ("ENOSTR", "device not a stream"), // 60
    ("ENODATA", "no data available"), // 61
    ("ETIME", "timer expired"), // 62
    ("ENOSR", "out of streams resources"), // 63
    ("ENONET", "machine is not on the network"), // 64
    ("ENOPKG", "package not installed"), // 65
    ("EREMOTE", "object is remote"), // 66
    ("ENOLINK", "link has been severed"), // 67
    ("EADV", "advertise error"), // 68
    ("ESRMNT", "srmount error"), // 69
    ("ECOMM", "communication error on send"), // 70
    ("EPROTO", "protocol error"), // 71
    ("EMULTIHOP", "multihop attempted"), // 72
    ("EDOTDOT", "RFS specific error"), // 73
    ("EBADMSG", "bad message"), // 74
    ("EOVERFLOW", "value too large for defined data type"), // 75
    ("ENOTUNIQ", "name not unique on network"), // 76
    ("EBADFD", "file descriptor in bad state"), // 77
    ("EREMCHG", "remote address changed"), // 78
    ("ELIBACC", "can not access a needed shared library"), // 79
    ("ELIBBAD", "accessing a corrupted shared library"), // 80
    ("ELIBSCN", ".lib section in a.out corrupted"), // 81
    ("ELIBMAX", "attempting to link in too many shared libraries"), // 82
    ("ELIBEXEC", "cannot exec a shared library directly"), // 83
    ("EILSEQ", "invalid or incomplete multibyte or wide character"), // 84
    ("ERESTART", "interrupted system call should be restarted"), // 85
    ("ESTRPIPE", "streams pipe error"), // 86
    ("EUSERS", "too many users"), // 87
    ("ENOTSOCK", "socket operation on non-socket"), // 88
    ("EDESTADDRREQ", "destination address required"), // 89
    ("EMSGSIZE", "message too long"), // 90
    ("EPROTOTYPE", "protocol wrong type for socket"), // 91
    ("ENOPROTOOPT", "protocol not available"), // 92
    ("EPROTONOSUPPORT", "protocol not supported"), // 93
    ("ESOCKTNOSUPPORT", "socket type not supported"), // 94
    ("EOPNOTSUPP", "operation not supported"), // 95
    ("EPFNOSUPPORT", "protocol family not supported"), // 96
    ("EAFNOSUPPORT", "address family not supported by protocol"), // 97
    ("EADDRINUSE", "address already in use"), // 98
    ("EADDRNOTAVAIL", "cannot assign requested address"), // 99
    ("ENETDOWN", "network is down"), // 100
    ("ENETUNREACH", "network is unreachable"), // 101
    ("ENETRESET", "network dropped connection on reset"), // 102
    ("ECONNABORTED", "software caused connection abort"), // 103
    ("ECONNRESET", "connection reset by peer"), // 104
    ("ENOBUFS", "no buffer space available"), // 105
    ("EISCONN", "transport endpoint is already connected"), // 106
    ("ENOTCONN", "transport endpoint is not connected"), // 107
    ("ESHUTDOWN", "cannot send after transport endpoint shutdown"), // 108
    ("ETOOMANYREFS", "too many references: cannot splice"), // 109
    ("ETIMEDOUT", "connection timed out"), // 110
    ("ECONNREFUSED", "connection refused"), // 111
    ("EHOSTDOWN", "host is down"), // 112
    ("EHOSTUNREACH", "no route to host"), // 113
    ("EALREADY", "operation already in progress"), // 114
    ("EINPROGRESS", "operation now in progress"), // 115
    ("ESTALE", "stale file handle"), // 116
    ("EUCLEAN", "structure needs cleaning"), // 117
    ("ENOTNAM", "not a XENIX named type file"), // 118
    ("ENAVAIL", "no XENIX semaphores available"), // 119
    ("EISNAM", "is a named type file"), // 120
    ("EREMOTEIO", "remote I/O error"), // 121
    ("EDQUOT", "disk quota exceeded"), // 122
    ("ENOMEDIUM", "no medium found"), // 123
    ("EMEDIUMTYPE", "wrong medium type"), // 124
    ("ECANCELED", "operation canceled"), // 125
    ("ENOKEY", "required key not available"), // 126
    ("EKEYEXPIRED", "key has expired"), // 127
    ("EKEYREVOKED", "key has been revoked"), // 128
    ("EKEYREJECTED", "key was rejected by service"), // 129
    ("EOWNERDEAD", "owner died"), // 130
    ("ENOTRECOVERABLE", "state not recoverable"), // 131
    ("ERFKILL", "operation not possible due to RF-kill"), // 132
    ("EHWPOISON", "memory page has hardware error"), // 133
];

/// The symbolic name of `e` (`"ENOSPC"`), if it is a Linux errno.
pub fn name(e: i32) -> Option<&'static str> {
    entry(e).map(|(n, _)| n)
}

/// What `e` means (`"no space left on device"`), if it is a Linux errno.
pub fn description(e: i32) -> Option<&'static str> {
    entry(e).map(|(_, d)| d)
}

fn entry(e: i32) -> Option<(&'static str, &'static str)> {
    let i = usize::try_from(e).ok()?.checked_sub(1)?;
    TABLE.get(i).copied().filter(|(n, _)| !n.is_empty())
}

/// An errno value as a user reads it: `ENOSPC (no space left on device)`, or `errno 4242` for
/// a number Linux does not define.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match entry(self.0) {
            Some((n, d)) => write!(f, "{n} ({d})"),
            None => write!(f, "errno {}", self.0),
        }
    }
}
