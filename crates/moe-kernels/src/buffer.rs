//! Large zero-filled buffers, backed by transparent huge pages where the OS allows: the training
//! step's GEMMs stream through hundreds of MB of weights, gradients and activations, and 2 MiB
//! pages cut its TLB misses (bench-moe8x2 trains about 1-2% faster with them).

use crate::Float;

/// Bytes of one huge page (x86-64 and aarch64 with 4 KiB base pages).
const HUGE: usize = 2 << 20;

/// `len` zeros. From 2 MiB up, the buffer is marked for huge pages before anything touches
/// it (Linux `madvise(MADV_HUGEPAGE)`, honoured when transparent huge pages are in `madvise` or
/// `always` mode; a refusal leaves ordinary pages).
pub fn zeroed<T: Float>(len: usize) -> Vec<T> {
    // vec! of zeros asks the allocator for zeroed memory: fresh, untouched pages when large
    let v = vec![T::ZERO; len];
    advise_huge(v.as_ptr() as usize, std::mem::size_of_val(v.as_slice()));
    v
}

#[cfg(target_os = "linux")]
fn advise_huge(addr: usize, bytes: usize) {
    if bytes < HUGE {
        return;
    }
    // madvise wants page-aligned ranges; the kernel uses huge pages for the 2 MiB-aligned part
    let start = addr.next_multiple_of(4096);
    let end = (addr + bytes) / 4096 * 4096;
    // SAFETY: the range lies inside the live allocation `v`; MADV_HUGEPAGE changes only how
    // the kernel backs it, never its contents.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_addr: usize, _bytes: usize) {}

/// Sets `x` to zeros and gives its whole pages back to the OS (Linux `MADV_DONTNEED`: they
/// read as zeros and take no memory until written again); the partial pages at its ends are
/// filled with zeros. For a buffer whose contents are done with but whose allocation stays.
pub fn release<T: Float>(x: &mut [T]) {
    let (addr, bytes) = (x.as_mut_ptr() as usize, std::mem::size_of_val(x));
    let start = addr.next_multiple_of(4096);
    let end = ((addr + bytes) / 4096 * 4096).max(start);
    if cfg!(not(target_os = "linux")) || end == start {
        x.fill(T::ZERO);
        return;
    }
    let size = std::mem::size_of::<T>();
    let (head, tail) = ((start - addr) / size, (addr + bytes - end) / size);
    x[..head].fill(T::ZERO);
    let n = x.len();
    x[n - tail..].fill(T::ZERO);
    #[cfg(target_os = "linux")]
    // SAFETY: [start, end) is whole pages inside the live, exclusively borrowed allocation `x`,
    // which is private anonymous memory (from the allocator); MADV_DONTNEED makes those pages
    // read as zeros, which is the value this function promises (zero bits are T::ZERO).
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
    };
}
