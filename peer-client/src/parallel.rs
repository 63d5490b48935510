//! Chunk work spread over the machine's cores: chunks of a purchase are
//! encrypted, decrypted and hashed independently (the nonce comes from the
//! chunk's index), so a batch of them can be processed side by side and
//! then sent or written in order.

use std::num::NonZeroUsize;

/// Chunks processed side by side per batch: a few per core, so the cores
/// stay busy while the batch's slowest chunk finishes, and few enough that
/// a batch of the largest chunks (4 MiB) stays small in memory.
#[must_use]
pub fn batch_len() -> usize {
    (workers() * 2).min(MAX_BATCH)
}

/// The largest batch, whatever the core count: 8 chunks of at most 4 MiB.
const MAX_BATCH: usize = 8;

fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Runs `work(i, &mut items[i])` for every item, on up to one thread per
/// core (the calling thread included); returns the first error.
///
/// # Errors
/// The first error `work` returned.
pub fn for_each<T, E, F>(items: &mut [T], work: F) -> Result<(), E>
where
    T: Send,
    E: Send,
    F: Fn(usize, &mut T) -> Result<(), E> + Sync,
{
    let per_thread = items.len().div_ceil(workers()).max(1);
    if per_thread >= items.len() {
        return items
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, item)| work(i, item));
    }
    let work = &work;
    std::thread::scope(|scope| {
        let mut parts = items.chunks_mut(per_thread).enumerate();
        let first = parts.next();
        let handles: Vec<_> = parts
            .map(|(n, part)| {
                scope.spawn(move || {
                    part.iter_mut()
                        .enumerate()
                        .try_for_each(|(i, item)| work(n * per_thread + i, item))
                })
            })
            .collect();
        let mut result = first.map_or(Ok(()), |(_, part)| {
            part.iter_mut()
                .enumerate()
                .try_for_each(|(i, item)| work(i, item))
        });
        for handle in handles {
            let joined = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if result.is_ok() {
                result = joined;
            }
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_processed_once_with_its_index() {
        for len in [0usize, 1, 2, 3, 7, 16, 33] {
            let mut items: Vec<(usize, u32)> = vec![(usize::MAX, 0); len];
            for_each(&mut items, |i, item| {
                item.0 = i;
                item.1 += 1;
                Ok::<(), ()>(())
            })
            .expect("no error");
            for (i, item) in items.iter().enumerate() {
                assert_eq!(*item, (i, 1));
            }
        }
    }

    #[test]
    fn an_error_comes_back() {
        let mut items = vec![0u8; 9];
        let result = for_each(&mut items, |i, _| if i == 5 { Err(i) } else { Ok(()) });
        assert_eq!(result, Err(5));
    }
}
