//! x86_64 only: the few instructions pmig cannot write in Rust. Saving and resuming a
//! callee-saved context, creating a thread that resumes one, the `rt_sigreturn` trampoline for
//! handlers installed with a raw `rt_sigaction`, and raw system calls.
//!
//! The context functions are written so that, to the compiler, `save_and_call` is an
//! ordinary call that returns once: the second return (after a restore) restores exactly the
//! registers the ABI says a call preserves, with the stack pointer the call would leave.

use crate::Ctx;
use core::arch::{asm, global_asm};

global_asm!(
    r#"
    .text
    .globl pmig_save_and_call
    .type pmig_save_and_call,@function
pmig_save_and_call:
    mov [rdi + 0], rbx
    mov [rdi + 8], rbp
    mov [rdi + 16], r12
    mov [rdi + 24], r13
    mov [rdi + 32], r14
    mov [rdi + 40], r15
    lea rax, [rsp + 8]
    mov [rdi + 48], rax
    mov rax, [rsp]
    mov [rdi + 56], rax
    stmxcsr [rdi + 64]
    fnstcw [rdi + 68]
    sub rsp, 8
    mov rax, rsi
    mov rdi, rdx
    call rax
    add rsp, 8
    ret
    .size pmig_save_and_call, . - pmig_save_and_call

    .globl pmig_restore_context
    .type pmig_restore_context,@function
pmig_restore_context:
    ldmxcsr [rdi + 64]
    fldcw [rdi + 68]
    mov rbx, [rdi + 0]
    mov rbp, [rdi + 8]
    mov r12, [rdi + 16]
    mov r13, [rdi + 24]
    mov r14, [rdi + 32]
    mov r15, [rdi + 40]
    mov rsp, [rdi + 48]
    mov rax, rsi
    jmp qword ptr [rdi + 56]
    .size pmig_restore_context, . - pmig_restore_context

    .globl pmig_clone_thread
    .type pmig_clone_thread,@function
pmig_clone_thread:
    mov r10, rcx
    mov eax, 56
    syscall
    test rax, rax
    jnz 1f
    mov rdi, r9
    mov esi, 1
    jmp pmig_restore_context
1:
    ret
    .size pmig_clone_thread, . - pmig_clone_thread

    .globl pmig_clone3_resume
    .type pmig_clone3_resume,@function
pmig_clone3_resume:
    mov r8, rdx
    mov r9, rcx
    mov eax, 435
    syscall
    test rax, rax
    jnz 1f
    mov rdi, r8
    mov rsi, r9
    jmp pmig_restore_context
1:
    ret
    .size pmig_clone3_resume, . - pmig_clone3_resume

    .globl pmig_sigreturn
    .type pmig_sigreturn,@function
pmig_sigreturn:
    mov eax, 15
    syscall
    ud2
    .size pmig_sigreturn, . - pmig_sigreturn
"#
);

extern "C" {
    fn pmig_save_and_call(ctx: *mut Ctx, f: extern "C" fn(u64) -> u64, arg: u64) -> u64;
    fn pmig_restore_context(ctx: *const Ctx, ret: u64) -> !;
    fn pmig_clone_thread(flags: u64, stack: u64, ptid: u64, ctid: u64, tls: u64, ctx: *const Ctx) -> i64;
    fn pmig_clone3_resume(args: *const crate::CloneArgs, size: u64, ctx: *const Ctx, ret: u64) -> i64;
    fn pmig_sigreturn();
}

/// `clone3(2)` a thread (or process) whose first act is to resume `*ctx`, where
/// `save_and_call` then returns `ret`. Returns the new tid (in the caller's pid namespace) or
/// `-errno`. The child runs on `args.stack` only until it switches to the context's stack.
///
/// # Safety
/// `args` must describe a valid clone (a thread needs `CLONE_VM | CLONE_THREAD |
/// CLONE_SIGHAND`, a stack, and the TLS the context expects); `*ctx` and the memory it refers
/// to must stay valid until the child has switched to it.
pub unsafe fn clone3_resume(args: &crate::CloneArgs, ctx: *const Ctx, ret: u64) -> i64 {
    // SAFETY: the caller guarantees the arguments as documented; the assembly keeps ctx and
    // ret in r8/r9, which the syscall instruction preserves.
    unsafe { pmig_clone3_resume(args, core::mem::size_of::<crate::CloneArgs>() as u64, ctx, ret) }
}

/// Saves the callee-saved context into `*ctx` and calls `f(arg)`; returns what `f` returns.
/// If the context is later resumed with [`restore_context`] (in this process after a restore),
/// this call returns a second time, with the value given there.
///
/// # Safety
/// `ctx` must be valid for writes. Whoever resumes the context must make sure the stack above
/// the saved stack pointer holds what it held at the time of the call.
pub unsafe fn save_and_call(ctx: *mut Ctx, f: extern "C" fn(u64) -> u64, arg: u64) -> u64 {
    // SAFETY: the caller guarantees `ctx` is writable; the assembly follows the C ABI.
    unsafe { pmig_save_and_call(ctx, f, arg) }
}

/// Resumes a context saved by [`save_and_call`], which then returns `ret`.
///
/// # Safety
/// The context must have been saved by `save_and_call` in this address space, its stack must
/// be intact, and the thread pointer (fs base) must be the one of the thread that saved it.
pub unsafe fn restore_context(ctx: *const Ctx, ret: u64) -> ! {
    // SAFETY: the caller guarantees the context and its stack are valid.
    unsafe { pmig_restore_context(ctx, ret) }
}

/// `clone(2)` a thread whose first act is to resume `*ctx` with [`crate::RESTORED_THREAD`].
/// Returns the new tid or `-errno`.
///
/// # Safety
/// `flags` must include `CLONE_VM` and `CLONE_SETTLS` semantics the saved context expects;
/// `stack` must point into memory the new thread may use until it switches to the context's
/// own stack; `*ctx` must stay valid until the child has read it.
pub unsafe fn clone_thread(flags: u64, stack: u64, ptid: u64, ctid: u64, tls: u64, ctx: *const Ctx) -> i64 {
    // SAFETY: the caller guarantees the arguments as documented.
    unsafe { pmig_clone_thread(flags, stack, ptid, ctid, tls, ctx) }
}

/// Address of a `rt_sigreturn` trampoline, for `sa_restorer` of a raw `rt_sigaction`.
pub fn sigreturn_trampoline() -> u64 {
    pmig_sigreturn as *const () as u64
}

/// Raw system call with up to six arguments; returns the kernel's value (`-errno` on error).
///
/// # Safety
/// The call must be safe to make with these arguments (pointers valid, no memory the program
/// relies on unmapped, …): the compiler cannot check any of it.
#[inline(always)]
pub unsafe fn syscall6(n: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64, a6: u64) -> i64 {
    let ret: i64;
    // SAFETY: the caller vouches for the system call; the asm clobbers only rax, rcx, r11
    // as the x86_64 syscall ABI says.
    unsafe {
        asm!("syscall",
            inlateout("rax") n as i64 => ret,
            in("rdi") a1, in("rsi") a2, in("rdx") a3,
            in("r10") a4, in("r8") a5, in("r9") a6,
            lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    ret
}

/// The CPUID words that say which instruction-set extensions this CPU offers a program (what
/// glibc's and other libraries' ifuncs choose their code by when the program starts), in
/// the order [`CPU_FEATURES`] indexes them: leaf 1 ECX and EDX, leaf 7.0 EBX, ECX and EDX,
/// leaf 7.1 EAX, leaf 0x8000_0001 ECX and EDX.
pub fn cpu_feature_words() -> [u32; 8] {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    // (CPUID exists on every x86-64 CPU; leaves above the maximum are not asked.)
    let max = __cpuid(0).eax;
    let max_ext = __cpuid(0x8000_0000).eax;
    let l1 = __cpuid(1);
    let (b7, c7, d7, a71) = if max >= 7 {
        let (l7, l71) = (__cpuid_count(7, 0), __cpuid_count(7, 1));
        (l7.ebx, l7.ecx, l7.edx, l71.eax)
    } else {
        (0, 0, 0, 0)
    };
    let (ce, de) = if max_ext >= 0x8000_0001 {
        let e = __cpuid(0x8000_0001);
        (e.ecx, e.edx)
    } else {
        (0, 0)
    };
    [l1.ecx, l1.edx, b7, c7, d7, a71, ce, de]
}

/// Instruction-set extensions a program may use once it has seen them: `(word of
/// [`cpu_feature_words`], bit, name as /proc/cpuinfo spells it)`.
pub const CPU_FEATURES: &[(usize, u32, &str)] = &[
    (0, 0, "pni"), (0, 1, "pclmulqdq"), (0, 9, "ssse3"), (0, 12, "fma"), (0, 13, "cx16"), (0, 19, "sse4_1"),
    (0, 20, "sse4_2"), (0, 22, "movbe"), (0, 23, "popcnt"), (0, 25, "aes"), (0, 26, "xsave"), (0, 28, "avx"),
    (0, 29, "f16c"), (0, 30, "rdrand"), (2, 3, "bmi1"), (2, 4, "hle"), (2, 5, "avx2"), (2, 8, "bmi2"),
    (2, 9, "erms"), (2, 11, "rtm"), (2, 16, "avx512f"), (2, 17, "avx512dq"), (2, 18, "rdseed"), (2, 19, "adx"),
    (2, 21, "avx512ifma"), (2, 23, "clflushopt"), (2, 24, "clwb"), (2, 28, "avx512cd"), (2, 29, "sha_ni"),
    (2, 30, "avx512bw"), (2, 31, "avx512vl"), (3, 1, "avx512vbmi"), (3, 6, "avx512_vbmi2"), (3, 8, "gfni"),
    (3, 9, "vaes"), (3, 10, "vpclmulqdq"), (3, 11, "avx512_vnni"), (3, 12, "avx512_bitalg"),
    (3, 14, "avx512_vpopcntdq"), (3, 22, "rdpid"), (4, 4, "fsrm"), (4, 8, "avx512_vp2intersect"),
    (4, 14, "serialize"), (4, 22, "amx_bf16"), (4, 23, "avx512_fp16"), (4, 24, "amx_tile"), (4, 25, "amx_int8"),
    (5, 4, "avx_vnni"), (5, 5, "avx512_bf16"), (6, 0, "lahf_lm"), (6, 5, "abm"), (6, 8, "3dnowprefetch"),
    (7, 27, "rdtscp"),
];

/// The names of the [`CPU_FEATURES`] that `saved` has and `here` lacks.
pub fn missing_cpu_features<'a>(saved: &'a [u32], here: &'a [u32]) -> impl Iterator<Item = &'static str> + 'a {
    let has = |w: &[u32], i: usize, bit: u32| w.get(i).is_some_and(|v| v & (1 << bit) != 0);
    CPU_FEATURES.iter().filter(move |&&(i, bit, _)| has(saved, i, bit) && !has(here, i, bit)).map(|&(_, _, n)| n)
}

/// Reads the thread pointer (fs base) of the calling thread.
pub fn fs_base() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: arch_prctl(ARCH_GET_FS) writes one u64 to the pointer we own.
    unsafe { syscall6(158, 0x1003, &mut v as *mut u64 as u64, 0, 0, 0, 0) };
    v
}

/// `XCR0`: the XSAVE feature set the kernel enabled (what signal frames hold).
pub fn xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv with ecx=0 is available on every x86_64 CPU with OSXSAVE, which every CPU
    // Linux 6.x runs user space on has; it only reads a register.
    unsafe { asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    ((hi as u64) << 32) | lo as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_features_the_saved_cpu_had_and_this_one_lacks() {
        // Saved: sse4_2 (word 0 bit 20), avx2 (word 2 bit 5), bmi2 (word 2 bit 8).
        let saved = [1 << 20, 0, (1 << 5) | (1 << 8), 0, 0, 0, 0, 0];
        let here = [1 << 20, 0, 1 << 8, 0, 0, 0, 0, 0];
        let mut missing = missing_cpu_features(&saved, &here);
        assert_eq!((missing.next(), missing.next()), (Some("avx2"), None));
        // An image with fewer words (or none) misses nothing.
        assert_eq!(missing_cpu_features(&[], &here).count(), 0);
        // This CPU has what it has.
        let me = cpu_feature_words();
        assert_eq!(missing_cpu_features(&me, &me).count(), 0);
    }
}
