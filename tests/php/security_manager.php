<?php
// The AEIMS SecurityManager's file protocol, as the PHP application uses it beside the data
// layer (issue 7): a read under LOCK_SH, released; later a write under a separate LOCK_EX on
// whatever inode `fopen` opened, never re-checking that it is still the file at the path.

function safeJSONRead(string $path): ?array
{
    $fp = @fopen($path, 'r');
    if ($fp === false) {
        return null;
    }
    flock($fp, LOCK_SH);
    $content = stream_get_contents($fp);
    flock($fp, LOCK_UN);
    fclose($fp);
    $data = json_decode($content, true);
    return is_array($data) ? $data : null;
}

function safeFileWrite(string $path, string $data): bool
{
    $fp = fopen($path, 'c+');
    if ($fp === false) {
        return false;
    }
    if (!flock($fp, LOCK_EX)) {
        fclose($fp);
        return false;
    }
    ftruncate($fp, 0);
    rewind($fp);
    $written = fwrite($fp, $data);
    fflush($fp);
    flock($fp, LOCK_UN);
    fclose($fp);
    return $written === strlen($data);
}
