//! Sockets. Not restorable yet: a checkpoint of a program holding one (above fd 2) fails
//! with a message naming it. (Issue 3 brings listening, bound, paired and connected sockets.)

use super::{DumpCtx, FdInfo, Ops, RestoreCtx};
use pmig_image::{FileKind, FileState};

pub const OPS: Ops = Ops { name: "socket", dump, restore };

fn dump(i: &FdInfo, _: &mut DumpCtx) -> Option<Result<FileKind, String>> {
    if i.file_type() != libc::S_IFSOCK {
        return None;
    }
    if i.fd <= 2 {
        return Some(Ok(FileKind::Socket(pmig_image::SocketState { ino: i.st.st_ino, ..Default::default() })));
    }
    Some(Err("sockets cannot be checkpointed yet".into()))
}

fn restore(f: &FileState, _: &mut RestoreCtx) -> Option<Result<i32, String>> {
    match &f.kind {
        FileKind::Socket(_) => Some(Err("sockets cannot be restored yet".into())),
        _ => None,
    }
}
