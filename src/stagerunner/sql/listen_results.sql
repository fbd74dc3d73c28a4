-- listen_results: a result waiter's own connection wakes when a task finishes.
LISTEN stagerunner_results;
