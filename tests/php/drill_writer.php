<?php
// The migration drill's PHP application (tests/migration_drill_support.py, PhpWriter):
// php drill_writer.php <data_dir> <name> <interval_us> <control_dir>
// One write per turn until <control_dir>/stop exists, round robin: a new message, a new
// customer, a credits top-up (+1) of cust_<name>_0 or _1. Pausing: the drill writes a number
// into <control_dir>/pause; between two writes the writer answers with the same number in
// <control_dir>/paused and writes nothing until `pause` is gone. Each write safeFileWrite
// acknowledged is printed as one JSON line.

require __DIR__ . '/writes.php';

[$script, $root, $name, $intervalUs, $control] = $argv;
$nothing = function (): void {
};
$i = 0;
while (!file_exists("$control/stop")) {
    clearstatcache();
    if (file_exists("$control/pause")) {
        file_put_contents("$control/paused.tmp", file_get_contents("$control/pause"));
        rename("$control/paused.tmp", "$control/paused");
        usleep(20000);
        continue;
    }
    $creditsId = "cust_{$name}_" . ($i % 2);
    acknowledge(writeNth($root, $name, $i, $creditsId, fn ($current) => $current + 1, $nothing));
    $i++;
    usleep((int) $intervalUs);
}
