// An admin client that talks to the KRaft controllers directly (KIP-919,
// bootstrap.controllers) with nothing but Kafka's own client: what any local process could
// run against a controller port. librdkafka has no bootstrap.controllers, hence Java.
// Usage: ControllerAcls <controller host:port> <client properties file | -> describe|create
// <principal>
//   describe: lists every ACL; create: adds ALLOW ALL on the cluster for <principal>.
// Prints one line: "OK <n ACLs>" / "OK created", or "FAILED <exception class>: <message>"
// (the cause the admin call failed with); exit 0 either way, 2 on bad usage.
import java.io.FileInputStream;
import java.io.InputStream;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public final class ControllerAcls {
    public static void main(String[] args) throws Exception {
        if (args.length != 4 || !(args[2].equals("describe") || args[2].equals("create"))) {
            System.err.println("usage: ControllerAcls <host:port> <properties|-> describe|create <principal>");
            System.exit(2);
        }
        Properties props = new Properties();
        if (!args[1].equals("-")) {
            try (InputStream in = new FileInputStream(args[1])) {
                props.load(in);
            }
        }
        props.put(AdminClientConfig.BOOTSTRAP_CONTROLLERS_CONFIG, args[0]);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "15000");
        try (Admin admin = Admin.create(props)) {
            if (args[2].equals("describe")) {
                int n = admin.describeAcls(AclBindingFilter.ANY).values().get().size();
                System.out.println("OK " + n + " ACLs");
            } else {
                AclBinding grant = new AclBinding(
                        new ResourcePattern(ResourceType.CLUSTER, "kafka-cluster", PatternType.LITERAL),
                        new AccessControlEntry(args[3], "*", AclOperation.ALL, AclPermissionType.ALLOW));
                admin.createAcls(List.of(grant)).all().get();
                System.out.println("OK created");
            }
        } catch (ExecutionException e) {
            Throwable cause = e.getCause() == null ? e : e.getCause();
            System.out.println("FAILED " + cause.getClass().getName() + ": " + cause.getMessage());
        }
    }
}
