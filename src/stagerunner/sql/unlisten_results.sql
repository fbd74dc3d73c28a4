-- unlisten_results: before a waiter's pooled connection goes back to its pool.
UNLISTEN stagerunner_results;
