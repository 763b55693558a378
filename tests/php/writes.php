<?php
// The three writes the PHP application makes to the JSON files, shared by the test writers
// (writer.php, drill_writer.php): each a read under LOCK_SH, then an in-place write under
// LOCK_EX (safeJSONRead / safeFileWrite), with `$beforeWrite` called in between (a pause
// standing for the rest of the request, which makes the read-modify-write stale).
// Each returns the acknowledgement to print, or null when safeFileWrite refused the write.

require_once __DIR__ . '/security_manager.php';

function writeMessage(string $root, string $name, int $i, callable $beforeWrite): ?array
{
    $path = "$root/data/messages.json";
    $data = safeJSONRead($path) ?? ['messages' => []];
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
    $beforeWrite();
    $ok = safeFileWrite($path, json_encode($data, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE));
    return $ok ? ['kind' => 'message', 'id' => $id, 'content' => "$name says $i"] : null;
}

function writeCustomer(string $root, string $name, int $i, callable $beforeWrite): ?array
{
    $path = "$root/data/customers.json";
    $data = safeJSONRead($path) ?? ['customers' => []];
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
    $beforeWrite();
    $ok = safeFileWrite($path, json_encode($data, JSON_PRETTY_PRINT));
    return $ok ? ['kind' => 'customer', 'id' => $id, 'credits' => $i] : null;
}

// Sets customer `$id`'s credits to `$credits($current)`; exits 1 when the customer is missing.
function writeCredits(string $root, string $id, callable $credits, callable $beforeWrite): ?array
{
    $path = "$root/data/customers.json";
    $data = safeJSONRead($path);
    if ($data === null || !isset($data['customers'][$id])) {
        fwrite(STDERR, "no customer $id to credit\n");
        exit(1);
    }
    $new = $credits($data['customers'][$id]['billing']['credits']);
    $data['customers'][$id]['billing']['credits'] = $new;
    $data['last_updated'] = date('Y-m-d H:i:s');
    $beforeWrite();
    $ok = safeFileWrite($path, json_encode($data, JSON_PRETTY_PRINT));
    return $ok ? ['kind' => 'credits', 'id' => $id, 'credits' => $new] : null;
}

// Write number `$i` of a writer: a message, a new customer, then credits of `$creditsId`, in turn.
function writeNth(
    string $root,
    string $name,
    int $i,
    string $creditsId,
    callable $credits,
    callable $beforeWrite
): ?array {
    return match ($i % 3) {
        0 => writeMessage($root, $name, $i, $beforeWrite),
        1 => writeCustomer($root, $name, $i, $beforeWrite),
        2 => writeCredits($root, $creditsId, $credits, $beforeWrite),
    };
}

function acknowledge(?array $ack): void
{
    if ($ack !== null) {
        echo json_encode($ack), "\n";
        fflush(STDOUT);
    }
}
