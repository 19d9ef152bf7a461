// What a Curator user does first, run against a server given on the command
// line: a mutex (ephemeral-sequential + predecessor watch), a leader latch,
// a shared counter (optimistic setData with versions), a cache fed by
// watches, a transaction, and a persistent recursive watch.
// Prints "OK <check>" per check; any failure throws and exits non-zero.

import java.nio.charset.StandardCharsets;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;
import org.apache.curator.framework.*;
import org.apache.curator.framework.recipes.atomic.*;
import org.apache.curator.framework.recipes.cache.*;
import org.apache.curator.framework.recipes.leader.*;
import org.apache.curator.framework.recipes.locks.*;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.zookeeper.AddWatchMode;
import org.apache.zookeeper.CreateMode;

public class CuratorProbe {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
        System.out.println("OK " + what);
    }

    public static void main(String[] args) throws Exception {
        String connect = args[0], root = args[1];
        CuratorFramework c = CuratorFrameworkFactory.newClient(connect, 10000, 5000, new ExponentialBackoffRetry(100, 3));
        c.start();
        check(c.blockUntilConnected(10, TimeUnit.SECONDS), "connected");

        // Mutex: 4 threads x 25 increments of a plain variable under the lock.
        int[] counter = {0};
        AtomicInteger inside = new AtomicInteger();
        ExecutorService pool = Executors.newFixedThreadPool(4);
        java.util.List<Future<?>> fs = new java.util.ArrayList<>();
        for (int t = 0; t < 4; t++) {
            fs.add(pool.submit(() -> {
                InterProcessMutex m = new InterProcessMutex(c, root + "/lock");
                for (int i = 0; i < 25; i++) {
                    if (!m.acquire(10, TimeUnit.SECONDS)) throw new RuntimeException("lock timeout");
                    try {
                        if (inside.incrementAndGet() != 1) throw new RuntimeException("two holders");
                        int v = counter[0];
                        Thread.yield();
                        counter[0] = v + 1;
                        inside.decrementAndGet();
                    } finally {
                        m.release();
                    }
                }
                return null;
            }));
        }
        for (Future<?> f : fs) f.get(60, TimeUnit.SECONDS);
        pool.shutdown();
        check(counter[0] == 100, "mutex: 100 increments, one holder at a time");

        // Leader latch: exactly one of two leads; closing it hands over.
        LeaderLatch a = new LeaderLatch(c, root + "/leader", "a");
        LeaderLatch b = new LeaderLatch(c, root + "/leader", "b");
        a.start();
        check(a.await(10, TimeUnit.SECONDS), "latch: first candidate leads");
        b.start();
        Thread.sleep(200);
        check(!b.hasLeadership(), "latch: second candidate waits");
        a.close();
        check(b.await(10, TimeUnit.SECONDS), "latch: handover on close");
        b.close();

        // Optimistic counter built on versioned setData.
        DistributedAtomicLong n = new DistributedAtomicLong(c, root + "/n", new ExponentialBackoffRetry(10, 10));
        for (int i = 0; i < 10; i++) check(n.increment().succeeded(), "atomic increment " + i);
        check(n.get().postValue() == 10, "atomic long reads 10");

        // A cache fed by watches sees a change made through the same client.
        c.create().creatingParentsIfNeeded().forPath(root + "/cfg", "1".getBytes(StandardCharsets.UTF_8));
        CuratorCache cache = CuratorCache.build(c, root + "/cfg");
        CountDownLatch changed = new CountDownLatch(1);
        cache.listenable().addListener(CuratorCacheListener.builder().forChanges((o, nw) -> {
            if (new String(nw.getData(), StandardCharsets.UTF_8).equals("2")) changed.countDown();
        }).build());
        cache.start();
        Thread.sleep(200);
        c.setData().forPath(root + "/cfg", "2".getBytes(StandardCharsets.UTF_8));
        check(changed.await(10, TimeUnit.SECONDS), "cache sees the change");
        cache.close();

        // A transaction is all or nothing.
        try {
            c.transaction().forOperations(
                c.transactionOp().create().forPath(root + "/t1"),
                c.transactionOp().delete().forPath(root + "/missing"));
            check(false, "transaction with a failing op must fail");
        } catch (org.apache.zookeeper.KeeperException.NoNodeException e) {
            check(c.checkExists().forPath(root + "/t1") == null, "failed transaction left nothing");
        }

        // Persistent recursive watch (3.6+ API) sees a grandchild create.
        CountDownLatch seen = new CountDownLatch(1);
        c.watchers().add().withMode(AddWatchMode.PERSISTENT_RECURSIVE).usingWatcher(
            (org.apache.zookeeper.Watcher) e -> { if ((root + "/w/x/y").equals(e.getPath())) seen.countDown(); })
            .forPath(root + "/w");
        c.create().creatingParentsIfNeeded().withMode(CreateMode.PERSISTENT).forPath(root + "/w/x/y");
        check(seen.await(10, TimeUnit.SECONDS), "recursive watch fires for a grandchild");

        c.delete().deletingChildrenIfNeeded().forPath(root);
        c.close();
        System.out.println("ALL OK");
    }
}
