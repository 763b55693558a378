<?php
// A PHP writer beside the data layer: php writer.php <data_dir> <name> <count> <max_pause_us>
// Round robin: a new message (messages.json), a new customer (customers.json), a credits
// update of one of its own customers (cust_<name>_0..2). Each is a stale read-modify-write as
// the PHP DataLayer makes it (read, build, a pause standing for the rest of the request, write).
// Every write safeFileWrite acknowledged is printed as one JSON line.

require __DIR__ . '/writes.php';

[$script, $root, $name, $count, $maxPause] = $argv;
$count = (int) $count;
$maxPause = (int) $maxPause;
$ownCustomers = 3;

$pause = function () use ($maxPause): void {
    if ($maxPause > 0) {
        usleep(random_int(0, $maxPause));
    }
};

for ($i = 0; $i < $count; $i++) {
    $creditsId = "cust_{$name}_" . ($i % $ownCustomers);
    acknowledge(writeNth($root, $name, $i, $creditsId, fn ($current) => 1000 + $i, $pause));
}
