//! userfaultfd(2) as the engine and the pager use it (`<linux/userfaultfd.h>`; libc does not
//! carry these for glibc targets).
//!
//! The engine makes the userfaultfd in the restored process (it belongs to that process's
//! memory), registers the lazy regions in `MISSING` mode and sends it to the pager, a process
//! of pmig-resume's: every ioctl acts on the memory the userfaultfd was made for, whoever
//! calls it, and `UFFDIO_COPY` copies from the caller's memory (the pager's mapping of the
//! image) into the restored process.

/// `__NR_userfaultfd` on x86-64.
pub const SYS_USERFAULTFD: u64 = 323;
/// `UFFD_API`.
pub const API: u64 = 0xaa;

/// `_IOWR(0xaa, 0x3f, struct uffdio_api)`.
pub const IOC_API: u64 = 0xc018_aa3f;
/// `_IOWR(0xaa, 0x00, struct uffdio_register)`.
pub const IOC_REGISTER: u64 = 0xc020_aa00;
/// `_IOR(0xaa, 0x01, struct uffdio_range)`.
pub const IOC_UNREGISTER: u64 = 0x8010_aa01;
/// `_IOR(0xaa, 0x02, struct uffdio_range)`.
pub const IOC_WAKE: u64 = 0x8010_aa02;
/// `_IOWR(0xaa, 0x03, struct uffdio_copy)`.
pub const IOC_COPY: u64 = 0xc028_aa03;
/// `_IOWR(0xaa, 0x04, struct uffdio_zeropage)`.
pub const IOC_ZEROPAGE: u64 = 0xc020_aa04;

/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const MODE_MISSING: u64 = 1;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const MODE_WP: u64 = 2;
/// `_IOWR(0xaa, 0x06, struct uffdio_writeprotect)`.
pub const IOC_WRITEPROTECT: u64 = 0xc018_aa06;
/// `UFFDIO_WRITEPROTECT_MODE_WP`.
pub const WRITEPROTECT_MODE_WP: u64 = 1;
/// userfaultfd(2) flag: only faults taken in user mode (what an unprivileged process may ask
/// for when `vm.unprivileged_userfaultfd` is 0).
pub const USER_MODE_ONLY: u64 = 1;
/// `UFFD_FEATURE_WP_UNPOPULATED`: a page never touched is write-protected too.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: a write to a protected page is let through by the kernel (no
/// message), which marks the page written; `PAGEMAP_SCAN` reads and resets that mark.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Writeprotect {
    pub range: Range,
    pub mode: u64,
}

/// `PAGEMAP_SCAN` (Linux 6.7: `<linux/fs.h>`), on an fd of `/proc/PID/pagemap`:
/// `_IOWR('f', 16, struct pm_scan_arg)`.
pub const IOC_PAGEMAP_SCAN: u64 = 0xc060_6610;
/// `PM_SCAN_WP_MATCHING`: write-protect again the pages reported.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: refuse ranges not registered for async write-protect.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// `PAGE_IS_WRITTEN`: written since it was last write-protected.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PAGE_IS_FILE`: the page is the file's (page cache), not anonymous.
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// `PAGE_IS_PRESENT`: in memory.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_PFNZERO`: maps the shared zero page.
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `UFFD_FEATURE_EVENT_FORK`: a child forked from a registered process gets a userfaultfd of
/// its own, handed to the reader (needs `CAP_SYS_PTRACE`).
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
/// `UFFD_FEATURE_EVENT_REMAP`: `mremap` of a registered range is reported.
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// `UFFD_FEATURE_EVENT_REMOVE`: `madvise(MADV_DONTNEED/REMOVE)` of a registered range.
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// `UFFD_FEATURE_EVENT_UNMAP`: `munmap` of a registered range.
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// What pmig asks for: it must follow every change of the process's memory map, or a page
/// it puts in later would land where the program no longer expects the saved bytes.
pub const FEATURES: u64 = FEATURE_EVENT_FORK | FEATURE_EVENT_REMAP | FEATURE_EVENT_REMOVE | FEATURE_EVENT_UNMAP;

/// `uffd_msg.event` values.
pub const EVENT_PAGEFAULT: u8 = 0x12;
pub const EVENT_FORK: u8 = 0x13;
pub const EVENT_REMAP: u8 = 0x14;
pub const EVENT_REMOVE: u8 = 0x15;
pub const EVENT_UNMAP: u8 = 0x16;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiArg {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Range {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Register {
    pub range: Range,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Copy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    /// Bytes copied, or a negative errno.
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Zeropage {
    pub range: Range,
    pub mode: u64,
    pub zeropage: i64,
}

/// `struct uffd_msg` (32 bytes): `event`, then the event's arguments as raw words —
/// pagefault: `[flags, address, ptid]`; fork: `[ufd, …]` (low 32 bits); remap:
/// `[from, to, len]`; remove/unmap: `[start, end, …]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Msg {
    pub event: u8,
    pub _reserved1: u8,
    pub _reserved2: u16,
    pub _reserved3: u32,
    pub arg: [u64; 3],
}
