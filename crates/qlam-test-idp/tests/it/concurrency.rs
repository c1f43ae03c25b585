use std::sync::{Arc, Barrier};
use std::thread;

use crate::common::*;

#[test]
fn fifty_concurrent_refreshes_with_one_token_one_wins_and_the_family_dies() {
    const N: usize = 50;
    let idp = Arc::new(start(fast()));
    let t = login(&idp);
    let rt = str_of(&t, "refresh_token").to_string();
    idp.reset_counters();
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|_| {
            let (idp, rt, barrier) = (idp.clone(), rt.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let r = refresh(&idp, &rt);
                (r.status, r.json())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(
            (*status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
    }
    // The winner's tokens died with the family.
    let won = &winners[0].1;
    assert!(!idp.introspect(str_of(won, "refresh_token")));
    assert!(!idp.introspect(str_of(won, "access_token")));
    let c = idp.counters();
    assert_eq!(
        (
            c.token_requests,
            c.refresh_requests,
            c.refresh_ok,
            c.refresh_rejected,
            c.families_revoked
        ),
        (50, 50, 1, 49, 1)
    );
    assert_eq!(idp.requests().len(), 50);
}

#[test]
fn hundreds_of_simultaneous_connections_are_all_counted() {
    const N: usize = 300;
    let idp = Arc::new(start(qlam_test_idp::IdpConfig::default()));
    let url = format!("{}/.well-known/openid-configuration", idp.base_url());
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    get(&url).status
                })
                .unwrap()
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert_eq!(idp.counters().discovery, N as u64);
}
