-- listen: the channels a producer wakes on: new tasks, cancels, queue pauses.
LISTEN stagerunner_tasks;
LISTEN stagerunner_cancel;
LISTEN stagerunner_queues;
