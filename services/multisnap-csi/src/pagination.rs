//! ListVolumes and ListSnapshots pages. A token is the decimal index of the next entry in the
//! listing's fixed order (agent volume name, then snapshot id), so it stays meaningful across
//! driver restarts; a token that is not such a number, or points past the end, is ABORTED as
//! CSI says.

use tonic::Status;

/// The entries of one page and the token of the next ("" after the last page).
pub fn page<T>(
    all: Vec<T>,
    max_entries: i32,
    starting_token: &str,
) -> Result<(Vec<T>, String), Status> {
    if max_entries < 0 {
        return Err(Status::invalid_argument(format!(
            "max_entries {max_entries} is negative"
        )));
    }
    let start = if starting_token.is_empty() {
        0
    } else {
        match starting_token.parse::<usize>() {
            Ok(n) if n <= all.len() => n,
            _ => {
                return Err(Status::aborted(format!(
                    "starting_token {starting_token:?} is not a token this driver gave out for the current listing of {} entries; list again from the start",
                    all.len()
                )))
            }
        }
    };
    let take = if max_entries == 0 {
        usize::MAX
    } else {
        max_entries as usize
    };
    let end = start.saturating_add(take).min(all.len());
    let next = if end < all.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((
        all.into_iter().skip(start).take(end - start).collect(),
        next,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Following the tokens from the start visits every entry once, in order.
        #[test]
        fn pages_cover_the_listing(len in 0usize..40, max in 0i32..7) {
            let all: Vec<usize> = (0..len).collect();
            let mut seen = vec![];
            let mut token = String::new();
            loop {
                let (entries, next) = page(all.clone(), max, &token).unwrap();
                if max > 0 {
                    prop_assert!(entries.len() <= max as usize);
                }
                seen.extend(entries);
                if next.is_empty() {
                    break;
                }
                token = next;
            }
            prop_assert_eq!(seen, all);
        }
    }

    #[test]
    fn bad_tokens_abort() {
        for bad in ["invalid-token", "-1", "4", "1.5", " 1"] {
            let err = page(vec![1, 2, 3], 0, bad).err().unwrap();
            assert_eq!(err.code(), tonic::Code::Aborted, "{bad}");
        }
        assert_eq!(
            page(vec![1, 2, 3], 0, "3").unwrap(),
            (vec![], String::new())
        );
        assert_eq!(
            page(vec![1, 2], -1, "").err().unwrap().code(),
            tonic::Code::InvalidArgument
        );
    }
}
