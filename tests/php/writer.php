<?php
// A PHP writer beside the data layer: php writer.php <data_dir> <name> <count> <max_pause_us>
// Round robin: a new message (messages.json), a new customer (customers.json), a credits
// update of one of its own customers (cust_<name>_0..2). Each is a stale read-modify-write as
// the PHP DataLayer makes it (read, build, a pause standing for the rest of the request, write).
// Every write safeFileWrite acknowledged is printed as one JSON line.

require __DIR__ . '/security_manager.php';

[$script, $root, $name, $count, $maxPause] = $argv;
$count = (int) $count;
$maxPause = (int) $maxPause;
$messagesPath = "$root/data/messages.json";
$customersPath = "$root/data/customers.json";
$ownCustomers = 3;

function pause(int $maxPause): void
{
    if ($maxPause > 0) {
        usleep(random_int(0, $maxPause));
    }
}

for ($i = 0; $i < $count; $i++) {
    $kind = ['message', 'customer', 'credits'][$i % 3];
    if ($kind === 'message') {
        $data = safeJSONRead($messagesPath) ?? ['messages' => []];
        $id = "msg_{$name}_$i";
        $data['messages'][$id] = [
            'message_id' => $id,
            'conversation_id' => "conv_$name",
            'sender_type' => 'customer',
            'sender_id' => "cust_{$name}_0",
            'content' => "$name says $i",
            'content_type' => 'text',
            'sent_at' => date('Y-m-d H:i:s'),
        ];
        $data['last_updated'] = date('Y-m-d H:i:s');
        pause($maxPause);
        $ok = safeFileWrite($messagesPath, json_encode($data, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE));
        $ack = ['kind' => 'message', 'id' => $id, 'content' => "$name says $i"];
    } elseif ($kind === 'customer') {
        $data = safeJSONRead($customersPath) ?? ['customers' => []];
        $id = "cust_{$name}_new$i";
        $data['customers'][$id] = [
            'customer_id' => $id,
            'username' => "{$name}_new$i",
            'email' => "{$name}_new$i@example.test",
            'password_hash' => '$2y$04$fixturefixturefixturefixtureOwZ6Eo8ne6lVtmrd6m3b3iZ2C',
            'site_domain' => 'alpha.example.test',
            'active' => true,
            'created_at' => date('Y-m-d H:i:s'),
            'billing' => ['credits' => $i, 'total_spent' => 0],
        ];
        $data['last_updated'] = date('Y-m-d H:i:s');
        pause($maxPause);
        $ok = safeFileWrite($customersPath, json_encode($data, JSON_PRETTY_PRINT));
        $ack = ['kind' => 'customer', 'id' => $id, 'credits' => $i];
    } else {
        $data = safeJSONRead($customersPath);
        $id = "cust_{$name}_" . ($i % $ownCustomers);
        if ($data === null || !isset($data['customers'][$id])) {
            fwrite(STDERR, "no customer $id to credit\n");
            exit(1);
        }
        $data['customers'][$id]['billing']['credits'] = 1000 + $i;
        $data['last_updated'] = date('Y-m-d H:i:s');
        pause($maxPause);
        $ok = safeFileWrite($customersPath, json_encode($data, JSON_PRETTY_PRINT));
        $ack = ['kind' => 'credits', 'id' => $id, 'credits' => 1000 + $i];
    }
    if ($ok) {
        echo json_encode($ack), "\n";
        fflush(STDOUT);
    }
}
